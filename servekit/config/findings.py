"""What the validator reports: one ``Finding`` per problem, each with its fix."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
from collections.abc import Iterable
from typing import Any

from servekit.config.limits import MAX_INT_BITS
from servekit.runtime.decoding import brief

ERROR = "error"
WARNING = "warning"
MAX_SHOWN = 200  # characters of a value or key a finding repeats; the file holds the rest


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One problem in one file: where, which key, what it is, what is expected, how to fix it.

    Built with keywords only: seven of its fields are strings, and a swapped pair would
    type-check.

    >>> Finding(severity=ERROR, code="unknown-key", file="model-config.yml", line=3,
    ...         key="maxBatchdelay", value="50", expected="a key TorchServe reads",
    ...         fix="rename it to 'maxBatchDelay'",
    ...         problem="unknown key: TorchServe ignores it silently").text()
    "model-config.yml:3: error: maxBatchdelay=50: unknown key: TorchServe ignores it silently; \
expected a key TorchServe reads; fix: rename it to 'maxBatchDelay' [unknown-key]"
    """

    severity: str
    code: str
    file: str
    line: int | None
    key: str
    value: str
    expected: str
    fix: str
    problem: str

    def text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        value = f"={self.value}" if self.value else ""
        return printable(  # problems and fixes may quote the file's own text
            f"{where}: {self.severity}: {self.key}{value}: {self.problem}; "
            f"expected {self.expected}; fix: {self.fix} [{self.code}]"
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def malformed(file: str, line: int | None, expected: str, fix: str, why: str) -> Finding:
    """The one finding for a file that cannot be read at all."""
    return Finding(
        severity=ERROR,
        code="malformed-file",
        file=file,
        line=line,
        key="(file)",
        value="",
        expected=expected,
        fix=fix,
        problem=why,
    )


def show(value: Any) -> str:
    """``brief`` as findings use it: a value as the user wrote it (YAML scalars keep their
    quotes so types are visible), cut at ``MAX_SHOWN`` characters, so a finding stays one line."""
    return brief(value, MAX_SHOWN, written=True, length=True)


def key_text(key: Any) -> str:
    """A mapping key as YAML writes it: ``1``, ``true``, ``null``, ``2024-01-01``, ``name``."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return show(key)


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON holds it: string keys, finite floats (NaN and infinities as
    the strings ``"NaN"``, ``"Infinity"``), dates as ISO text, other objects as text.

    >>> jsonable({1: float("nan"), None: [float("-inf")], "d": datetime.date(2024, 1, 1)})
    {'1': 'NaN', 'null': ['-Infinity'], 'd': '2024-01-01'}
    """
    if isinstance(value, dict):
        return {key_text(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        return show(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return show(value)


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped: one line, any terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (case first, then spelling), if any is close."""
    names = list(known)
    for candidate in names:
        if candidate.lower() == name.lower() or _squash(candidate) == _squash(name):
            return candidate
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return close[0] if close else None


def _squash(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


# Every finding code, its severity and what it catches (rendered into docs/config-keys.md).
CODES: dict[str, tuple[str, str]] = {
    "malformed-file": (ERROR, "YAML or properties syntax TorchServe cannot read"),
    "malformed-json": (ERROR, "the models= value is not JSON: TorchServe does not start"),
    "unknown-key": (ERROR, "a key TorchServe 0.12 does not read (ignored silently); did you mean"),
    "wrong-type": (ERROR, "a value of the wrong type: YAML keeps the default, properties crash"),
    "out-of-range": (ERROR, "a value TorchServe clamps, ignores or cannot hold"),
    "bad-value": (ERROR, "a value outside the allowed choices, a bad address or regex"),
    "unresolved-variable": (ERROR, "$$VAR$$ whose variable is not set: TorchServe fails at start"),
    "missing-key": (ERROR, "a required model spec key is missing"),
    "missing-file": (ERROR, "a model spec names a file that does not exist"),
    "bad-handler": (ERROR, "the handler file is not Python or defines not exactly one class"),
    "bad-import": (
        ERROR,
        "a handler import an archived model cannot satisfy: relative, servekit outside "
        "servekit.runtime, a missing handlers module",
    ),
    "conditional-import": (
        WARNING,
        "a bad-import under if or in a function: it fails only when that code runs",
    ),
    "misplaced-key": (ERROR, "model_config: handler: in a spec (dropped): use handler_options"),
    "no-spec": (WARNING, "a load_models archive no spec in config/ builds"),
    "options-unchecked": (
        WARNING,
        "handler options declared in a way only running the handler tells (--import-handlers)",
    ),
    "undeclared-option": (ERROR, "a handler option the handler does not declare"),
    "bad-option": (ERROR, "a handler option of the wrong type or out of range"),
    "max-below-min": (ERROR, "maxWorkers < minWorkers: TorchServe ignores both"),
    "workers-ignored": (ERROR, "minWorkers or maxWorkers missing: TorchServe ignores the other"),
    "queue-below-batch": (ERROR, "the job queue is smaller than batchSize"),
    "timeout-below-delay": (ERROR, "responseTimeout (s) not above maxBatchDelay (ms)"),
    "retry-below-startup": (WARNING, "maxRetryTimeoutInSec shorter than startupTimeout"),
    "open-without-token": (ERROR, "an API bound off loopback while token authorization is off"),
    "open-allowed-urls": (ERROR, "allowed_urls admits remote URLs or files outside a model store"),
    "model-api-on": (WARNING, "enable_model_api=true (error when the management API is public)"),
    "pip-per-model": (WARNING, "install_py_dep_per_model=true: archives pip-install at load"),
    "metrics-open": (WARNING, "the metrics API (no token) bound off loopback"),
    "duplicate-key": (WARNING, "a key written twice; the last one wins"),
    "internal-key": (WARNING, "a key TorchServe sets itself"),
}

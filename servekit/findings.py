"""What the validator reports: one ``Finding`` per problem, each with its fix."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any

ERROR = "error"
WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem in one file: where, which key, what it is, what is expected, how to fix it.

    >>> Finding(ERROR, "unknown-key", "model-config.yml", 3, "maxBatchdelay", "50",
    ...         "a key TorchServe reads", "rename it to 'maxBatchDelay'",
    ...         "unknown key: TorchServe ignores it silently").text()
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
        return (
            f"{where}: {self.severity}: {self.key}{value}: {self.problem}; "
            f"expected {self.expected}; fix: {self.fix} [{self.code}]"
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def show(value: Any) -> str:
    """A value as the user wrote it: YAML scalars keep their quotes so types are visible."""
    if isinstance(value, str):
        return repr(value) if not value or value != value.strip() or value.isdigit() else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


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

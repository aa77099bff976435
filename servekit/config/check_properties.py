"""Checks of a ``config.properties``: keys, types, ranges, ``models=`` JSON and security.

Types follow how ``ConfigManager.java`` parses each key: ``Integer.parseInt``
(digits only; a trailing blank stops the server), ``Boolean.parseBoolean``
(anything but ``true`` silently reads as false), the ``ADDRESS_PATTERN`` regex. The file
is read as ISO-8859-1, as ``Properties.load(InputStream)`` reads it (other characters are
written as ``\\uXXXX``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import re._parser as re_parser  # the parse tree: how large a pattern is once unrolled
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import regex  # matching with a timeout: re cannot be stopped

from servekit.config import schema
from servekit.config.findings import ERROR, WARNING, Finding, did_you_mean, malformed, show
from servekit.config.limits import is_file, read_capped
from servekit.config.properties import Entry, log_config_file, parse_properties
from servekit.config.schema import Key
from servekit.errors import ConfigError

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
ADDRESS = re.compile(r"((https|http)://([^:^/]+)(:([0-9]+))?)|(unix:(/.*))", re.IGNORECASE)
ENV_VAR = re.compile(r"\$\$([^$]+[^$])\$\$")
LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")
# URLs a model must never come from: any remote scheme, any file outside a model store.
PROBE_URLS = (
    "http://attacker.example/model.mar",
    "https://attacker.example/model.mar",
    "ftp://attacker.example/model.mar",
    "file:///etc/passwd",
    "file:///tmp/evil.mar",
)
MATCH_SECONDS = 2.0  # all probe URLs against all patterns: longer means exponential backtracking
MAX_PATTERNS = 100  # allowed_urls patterns; a real config lists one to three
# The regex engine unrolls counted repeats when it compiles: (?:(?:a){1000}){1000} costs 270 MB,
# and 14 nested {2} over 2 GB (the cost grows with the nesting as much as with the counts).
MAX_UNROLLED = 100_000  # pattern items once counted repeats are unrolled, all patterns of a key
MAX_REPEAT_NESTING = 6  # repeats of {2} or more inside one another
_REPEATS = tuple(
    getattr(re_parser, op)
    for op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
    if hasattr(re_parser, op)
)
MAX_JAVA_INT_DIGITS = 19  # longer digit strings overflow even a Java long


def check_properties(
    path: Path, label: str, specs_dir: Path | None = None
) -> tuple[list[Finding], dict[str, str]]:
    """Findings for one properties file, and its resolved ``key -> value`` map; with
    ``specs_dir``, also each ``load_models`` archive that has no spec there."""
    try:
        entries = parse_properties(read_capped(path).decode("iso-8859-1"))
    except ConfigError as err:
        return [
            malformed(label, None, "a valid Java properties file", "fix the syntax", str(err))
        ], {}
    findings: list[Finding] = []
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for entry in entries:
        if entry.key in values:
            findings.append(_duplicate(label, entry, lines[entry.key]))
        resolved, problems = _resolve(label, entry)
        findings += problems
        values[entry.key] = resolved
        lines[entry.key] = entry.line
        if not problems:
            findings += _check_entry(label, Entry(entry.key, resolved, entry.line))
    findings += _security(label, values, lines)
    findings += _log_config(label, path.parent, values, lines)
    findings += _handler_metrics(label, values, lines)
    if specs_dir is not None:
        findings += _unspecced_models(label, values, lines, specs_dir)
    return findings, values


def _unspecced_models(
    label: str, values: Mapping[str, str], lines: Mapping[str, int], specs_dir: Path
) -> list[Finding]:
    """``load_models`` entries ``[name=]file.mar`` whose ``<file>.yml`` is not in ``specs_dir``:
    ``servekit archive`` never builds them (TorchServe reads the list as ``ModelServer.java``
    does: split at commas, an optional ``name=`` before the archive; ``all`` is every one)."""
    findings = []
    for entry in values.get("load_models", "").split(","):
        archive = entry.split("=", 1)[-1].strip()
        if not archive.endswith(".mar") or "/" in archive or ":" in archive:
            continue  # all, a URL or a path: not one of the project's archives
        name = archive[: -len(".mar")]
        if is_file(specs_dir / f"{name}.yml"):
            continue
        findings.append(
            Finding(
                severity=WARNING,
                code="no-spec",
                file=label,
                line=lines.get("load_models"),
                key="load_models",
                value=show(archive),
                expected=f"an archive servekit builds: a spec {specs_dir.name}/{name}.yml",
                fix=f"write {specs_dir.name}/{name}.yml or remove {archive} from load_models",
                problem="no spec builds this archive: servekit archive never makes it, and "
                "TorchServe fails to load it unless model_store holds one built elsewhere",
            )
        )
    return findings


def _handler_metrics(
    label: str, values: Mapping[str, str], lines: Mapping[str, int]
) -> list[Finding]:
    """With ``metrics_mode=prometheus`` but no ``model_metrics_auto_detect=true`` (or a
    ``metrics_config`` that declares them) the frontend drops every handler metric it does not
    know: ``/metrics`` shows TorchServe's own and none of the handlers' (pytorch/serve #2979)."""
    # ConfigManager.getMetricsMode drops blanks and upper-cases: " Prometheus" is prometheus
    if re.sub(r"\s", "", values.get("metrics_mode", "log")).upper() != "PROMETHEUS":
        return []
    if values.get("model_metrics_auto_detect", "false").lower() == "true":
        return []
    if "metrics_config" in values:
        return []  # the user's metrics.yaml may declare them; TorchServe reads it
    return [
        Finding(
            severity=WARNING,
            code="handler-metrics-dropped",
            file=label,
            line=lines.get("model_metrics_auto_detect") or lines.get("metrics_mode"),
            key="model_metrics_auto_detect",
            value=show(values.get("model_metrics_auto_detect", "(unset: false)")),
            expected="true, or a metrics_config that declares the handlers' metrics",
            fix="set model_metrics_auto_detect=true",
            problem="the frontend drops handler metrics missing from its metrics.yaml: /metrics "
            "would have no servekit_request_seconds, servekit_responses_total or Toolkit*",
        )
    ]


def _log_config(
    label: str, base: Path, values: Mapping[str, str], lines: Mapping[str, int]
) -> list[Finding]:
    """A ``-Dlog4j.configurationFile=`` in vmargs that names no file (relative: from ``base``)."""
    for word in values.get("vmargs", "").split():
        path = log_config_file(word)
        if path is not None and not is_file(base / path):
            return [
                Finding(
                    severity=ERROR,
                    code="missing-file",
                    file=label,
                    line=lines.get("vmargs"),
                    key="vmargs",
                    value=word,
                    expected=f"a log4j2 config file (relative paths from {base.name or '.'}/)",
                    fix="fix the path, or remove the option to keep TorchServe's default logging",
                    problem=f"{base / path} does not exist: log4j would log errors to the console "
                    "only, with no ts_log.log, access or metrics logs",
                )
            ]
    return []


def _check_entry(label: str, entry: Entry) -> list[Finding]:
    key = schema.PROPERTIES.get(entry.key)
    if key is None:
        return [_unknown(label, entry)]
    if key.internal:
        return [
            Finding(
                severity=WARNING,
                code="internal-key",
                file=label,
                line=entry.line,
                key=entry.key,
                value=show(entry.value),
                expected="no value: TorchServe sets this key itself",
                fix=f"remove '{entry.key}'",
                problem=f"{key.meaning}; a value here is overwritten or misleads",
            )
        ]
    if key.kind == schema.JSON_MODELS:
        return _check_models(label, entry)
    problem = _kind_problem(key, entry.value)
    if problem is None:
        return []
    code, text, fix = problem
    return [
        Finding(
            severity=ERROR,
            code=code,
            file=label,
            line=entry.line,
            key=entry.key,
            value=show(entry.value),
            expected=key.allowed(),
            fix=fix,
            problem=text,
        )
    ]


def _kind_problem(key: Key, value: str) -> tuple[str, str, str] | None:
    """``(code, problem, fix)`` when ``value`` is not what TorchServe parses for ``key``."""
    if key.kind in (schema.INT, schema.LONG, schema.PORT):
        return _int_problem(key, value)
    if key.kind == schema.DOUBLE:
        try:
            number = float(value)
        except ValueError:
            return (
                "wrong-type",
                "not a number: TorchServe logs an error and uses the default",
                f"write a number, e.g. {key.default}",
            )
        if not math.isfinite(number) or (key.minimum is not None and number < key.minimum):
            return "out-of-range", "out of range", f"use {key.allowed()}"
        return None
    if key.kind == schema.BOOL:
        if value.lower() in ("true", "false"):
            return None
        reads = "true" if value.strip().lower() == "true" else "false"
        return (
            "wrong-type",
            (f"not a boolean: Boolean.parseBoolean reads it as {reads}"),
            "write exactly true or false (no blanks, no yes/no/1/0)",
        )
    if key.choices:
        if value.replace(" ", "").lower() in [c.lower() for c in key.choices]:
            return None
        return (
            "bad-value",
            "not an allowed value: TorchServe logs an error and uses the default",
            f"use {key.allowed()}",
        )
    if key.kind == schema.ADDRESS and not ADDRESS.fullmatch(value):
        return (
            "bad-value",
            "not a bind address: TorchServe refuses to start",
            "write it like http://127.0.0.1:8080",
        )
    if key.kind == schema.HOST and (not value or " " in value):
        return "bad-value", "not a host", "write an IP address such as 127.0.0.1"
    if key.kind in (schema.REGEX, schema.URL_PATTERNS):
        return _regex_problem(key, value)
    return None


def _int_problem(key: Key, value: str) -> tuple[str, str, str] | None:
    if not re.fullmatch(r"[+-]?\d+", value):
        why = "trailing blanks" if value.strip() != value else "not an integer"
        return (
            "wrong-type",
            f"{why}: Integer.parseInt fails and TorchServe does not start",
            "write digits only, e.g. " + str(key.default if key.default is not None else 1),
        )
    if len(value.lstrip("+-")) > MAX_JAVA_INT_DIGITS:
        number = -(2**64) if value.startswith("-") else 2**64  # beyond any Java integer
    else:
        number = int(value)
    low, high = INT64 if key.kind == schema.LONG else INT32
    if not low <= number <= high:
        return (
            "out-of-range",
            "does not fit a Java int: TorchServe does not start",
            f"use {key.allowed()}",
        )
    if (key.minimum is not None and number < key.minimum) or (
        key.maximum is not None and number > key.maximum
    ):
        return "out-of-range", "out of range", f"use {key.allowed()}"
    return None


def _regex_problem(key: Key, value: str) -> tuple[str, str, str] | None:
    patterns = value.split(",") if key.kind == schema.URL_PATTERNS else [value]
    if len(patterns) > MAX_PATTERNS:
        return (
            "bad-value",
            f"{len(patterns)} patterns: more than the {MAX_PATTERNS} this validator checks",
            "list a few patterns that match only .mar files in the model store",
        )
    try:
        _compile_all(patterns)
    except PatternError as err:
        split = " (TorchServe splits allowed_urls on ',')" if len(patterns) > 1 else ""
        if err.costly:
            return (
                "bad-value",
                f"regex '{show(err.pattern)}' is too costly to compile: {err}",
                "simplify it: no counted repeats such as {2} nested in one another",
            )
        return (
            "bad-value",
            f"regex '{show(err.pattern)}' does not compile{split}: {err}",
            "fix the regular expression; write {m,n} quantifiers without a comma",
        )
    return None


def _resolve(label: str, entry: Entry) -> tuple[str, list[Finding]]:
    """``$$VAR$$`` replaced from the environment, as TorchServe does at start."""
    missing = [m for m in ENV_VAR.findall(entry.value) if m not in os.environ]
    if missing:
        return entry.value, [
            Finding(
                severity=ERROR,
                code="unresolved-variable",
                file=label,
                line=entry.line,
                key=entry.key,
                value=show(entry.value),
                expected=f"environment variable {missing[0]} to be set",
                fix=f"export {missing[0]}=... before starting TorchServe, or write the value",
                problem=f"$${missing[0]}$$ is not set: TorchServe fails at start "
                f"('Invalid Environment Variable {missing[0]}')",
            )
        ]
    return ENV_VAR.sub(lambda m: os.environ[m.group(1)], entry.value), []


def _unknown(label: str, entry: Entry) -> Finding:
    close = did_you_mean(entry.key, schema.PROPERTIES)
    if close:
        fix = f"did you mean '{close}'?"
    elif entry.key in schema.MODEL_CONFIG:
        fix = f"'{entry.key}' is a model-config.yml key: set it there or in models= JSON"
    else:
        fix = "remove it, or see docs/config-keys.md for the keys TorchServe reads"
    return Finding(
        severity=ERROR,
        code="unknown-key",
        file=label,
        line=entry.line,
        key=entry.key,
        value=show(entry.value),
        expected="a key TorchServe 0.12 reads",
        fix=fix,
        problem="unknown key: TorchServe ignores it silently",
    )


def _duplicate(label: str, entry: Entry, first: int) -> Finding:
    return Finding(
        severity=WARNING,
        code="duplicate-key",
        file=label,
        line=entry.line,
        key=entry.key,
        value=show(entry.value),
        expected="each key once",
        fix=f"remove one of the two (line {first} and line {entry.line})",
        problem=f"also set on line {first}; the last one wins",
    )


# ----- models= JSON -------------------------------------------------------------------------
def _check_models(label: str, entry: Entry) -> list[Finding]:
    def finding(code: str, key: str, value: Any, expected: str, fix: str, problem: str) -> Finding:
        return Finding(
            severity=ERROR,
            code=code,
            file=label,
            line=entry.line,
            key=key,
            value=show(value),
            expected=expected,
            fix=fix,
            problem=problem,
        )

    try:
        models = json.loads(entry.value)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, a 5,000-digit number, depth
        if isinstance(err, json.JSONDecodeError):
            why = f"{err.msg} at column {err.colno}"
        else:
            why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        return [
            finding(
                "malformed-json",
                "models",
                entry.value,
                "a JSON object",
                "fix the JSON (double quotes, no trailing commas)",
                f"malformed JSON ({why}): TorchServe does not start",
            )
        ]
    shape = 'a JSON object {"model": {"version": {"setting": value}}}'
    if not isinstance(models, dict) or not all(
        isinstance(v, dict) and all(isinstance(s, dict) for s in v.values())
        for v in models.values()
    ):
        return [
            finding(
                "wrong-type",
                "models",
                entry.value,
                shape,
                'nest it as {"iris": {"1.0": {"batchSize": 4}}}',
                "wrong shape: TorchServe does not start",
            )
        ]
    findings = []
    for model, versions in models.items():
        for version, settings in versions.items():
            for name, value in settings.items():
                where = f"models.{model}.{version}.{name}"
                key = schema.MODELS_JSON_KEYS.get(name)
                if key is None:
                    close = did_you_mean(name, schema.MODELS_JSON_KEYS)
                    findings.append(
                        finding(
                            "unknown-key",
                            where,
                            value,
                            "a setting TorchServe reads from models=",
                            f"did you mean '{close}'?" if close else "remove it",
                            "unknown setting: TorchServe ignores it silently",
                        )
                    )
                elif key.kind == schema.INT and (type(value) is not int or value <= 0):
                    code = "wrong-type" if type(value) is not int else "out-of-range"
                    findings.append(
                        finding(
                            code,
                            where,
                            value,
                            "an integer >= 1",
                            "write a positive integer",
                            "TorchServe silently uses its default instead",
                        )
                    )
                elif key.choices and value not in key.choices:
                    findings.append(
                        finding(
                            "bad-value",
                            where,
                            value,
                            key.allowed(),
                            f"use {key.allowed()}",
                            "TorchServe logs an error and uses the default",
                        )
                    )
    return findings


# ----- security -----------------------------------------------------------------------------
def is_loopback(address: str) -> bool:
    """True for 127.x, localhost, ::1 and Unix sockets; 0.0.0.0 and others are off loopback."""
    if address.lower().startswith("unix:"):
        return True
    host = urlsplit(address).hostname if "://" in address else address
    host = (host or "").lower()
    return host.startswith("127.") or host in LOOPBACK_HOSTS


def _security(label: str, values: Mapping[str, str], lines: Mapping[str, int]) -> list[Finding]:
    def get(name: str) -> str:
        default = schema.PROPERTIES[name].default
        return values.get(name, str(default) if default is not None else "")

    def finding(sev: str, code: str, key: str, expected: str, fix: str, why: str) -> Finding:
        value = show(values[key]) if key in values else f"(unset: {get(key)})"
        return Finding(
            severity=sev,
            code=code,
            file=label,
            line=lines.get(key),
            key=key,
            value=value,
            expected=expected,
            fix=fix,
            problem=why,
        )

    findings = []
    tokens_off = get("disable_token_authorization").lower() == "true"
    exposed = [
        name
        for name in (
            "inference_address",
            "management_address",
            "grpc_inference_address",
            "grpc_management_address",
        )
        if not is_loopback(get(name))
    ]
    if tokens_off:
        findings += [
            finding(
                ERROR,
                "open-without-token",
                name,
                "a loopback address while disable_token_authorization=true",
                "bind to 127.0.0.1, or set disable_token_authorization=false "
                "(clients then send the key from key_file.json)",
                "API reachable off this machine with token authorization disabled",
            )
            for name in exposed
        ]
    model_api = get("enable_model_api").lower() == "true"
    findings += _allowed_urls(values, finding, model_api)
    if model_api:
        public = "management_address" in exposed or "grpc_management_address" in exposed
        findings.append(
            finding(
                ERROR if public else WARNING,
                "model-api-on",
                "enable_model_api",
                "false",
                "set enable_model_api=false; register models with load_models at start",
                "anyone who reaches the management API can register a model: "
                "arbitrary code runs in the workers (ShellTorch, CVE-2023-43654)",
            )
        )
    if get("install_py_dep_per_model").lower() == "true":
        findings.append(
            finding(
                WARNING,
                "pip-per-model",
                "install_py_dep_per_model",
                "false",
                "install dependencies in the image; set install_py_dep_per_model=false",
                "each archive's requirements.txt is pip-installed at load: archives run "
                "code from the package index",
            )
        )
    if not is_loopback(get("metrics_address")) and get("enable_metrics_api").lower() == "true":
        findings.append(
            finding(
                WARNING,
                "metrics-open",
                "metrics_address",
                "a loopback address",
                "bind metrics_address to 127.0.0.1 (scrape through a proxy) or set "
                "enable_metrics_api=false",
                "the metrics API has no token authorization and is reachable off this machine",
            )
        )
    return findings


def _allowed_urls(values: Mapping[str, str], finding: Any, model_api: bool) -> list[Finding]:
    """Probe URLs the patterns admit: an error while the model API can register them, a
    warning while it is off (only load_models at start, from the model store, loads models)."""
    patterns = values.get("allowed_urls", str(schema.PROPERTIES["allowed_urls"].default))
    if len(patterns.split(",")) > MAX_PATTERNS:
        return []  # reported as bad-value already
    try:
        compiled = _compile_all(patterns.split(","))
    except PatternError:
        return []  # reported as bad-value already
    try:
        reached = _reached(compiled)
    except TimeoutError:
        return [
            finding(
                ERROR,
                "bad-value",
                "allowed_urls",
                "patterns that match a URL in linear time",
                "remove nested or repeated quantifiers such as (a+)+ or .*.*.*",
                f"matching {len(PROBE_URLS)} URLs of about {len(PROBE_URLS[0])} characters "
                f"took over {MATCH_SECONDS} s in all: TorchServe would hang on registrations",
            )
        ]
    if not reached:
        return []
    why = f"models may be loaded from {reached[0]}"
    if len(reached) > 1:
        why += f" (and {len(reached) - 1} more probe URLs)"
    if not model_api:
        why += " as soon as enable_model_api=true lets clients register models"
    return [
        finding(
            ERROR if model_api else WARNING,
            "open-allowed-urls",
            "allowed_urls",
            "patterns that match only .mar files in the local model store",
            r"allowed_urls=file://.*/model_store/[A-Za-z0-9_-]+[.]mar",
            why,
        )
    ]


def _reached(compiled: list[regex.Pattern[str]]) -> list[str]:
    """The probe URLs some pattern admits; ``TimeoutError`` past one deadline for them all."""
    deadline = time.monotonic() + MATCH_SECONDS
    reached = []
    for url in PROBE_URLS:
        for pattern in compiled:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if pattern.fullmatch(url, timeout=left) is not None:
                reached.append(url)
                break
    return reached


class PatternError(ValueError):
    """A regex neither ``re`` nor ``regex`` takes (syntax, a huge repeat, deep nesting), or one
    too costly to compile."""

    def __init__(self, pattern: str, why: str, costly: bool = False) -> None:
        super().__init__(why)
        self.pattern = pattern
        self.costly = costly


def _compile_all(patterns: list[str]) -> list[regex.Pattern[str]]:
    """Each pattern compiled; ``PatternError`` for the first that fails or when together they
    unroll to more than ``MAX_UNROLLED`` items (checked before the engine sees any)."""
    checked = [_checked(p) for p in patterns]
    total = 0
    for pattern, size in zip(patterns, checked, strict=True):
        total += size
        if total > MAX_UNROLLED:
            raise PatternError(
                pattern,
                f"its counted repeats unroll to more than {MAX_UNROLLED} items "
                f"(with the patterns before it): compiling would take gigabytes",
                costly=True,
            )
    return [_compile(p) for p in patterns]


def _checked(pattern: str) -> int:
    """Items of ``pattern`` once unrolled; ``PatternError`` if ``re`` refuses it or its repeats
    nest too deep. ``re`` first: its error texts are the clearest."""
    try:
        with warnings.catch_warnings():  # "possible nested set": Java reads it as written
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(pattern)
            tree = re_parser.parse(pattern)
    except (re.error, OverflowError, RecursionError) as err:
        raise PatternError(pattern, _why(err)) from None
    size, nesting = _unrolled(tree)
    if nesting > MAX_REPEAT_NESTING:
        raise PatternError(
            pattern,
            f"repeats of 2 or more nested {nesting} deep (at most {MAX_REPEAT_NESTING}): "
            "compiling would take gigabytes",
            costly=True,
        )
    return size


def _unrolled(tree: Any) -> tuple[int, int]:
    """(items once each counted repeat is copied its minimum number of times, the deepest
    nesting of repeats of 2 or more), walking ``re``'s parse tree without recursion."""
    size, deepest = 0, 0
    stack: list[tuple[Any, int, int]] = [(tree, 1, 0)]
    while stack:
        node, times, depth = stack.pop()
        if isinstance(node, re_parser.SubPattern):
            for op, arg in node.data:
                if op in _REPEATS:
                    least, _, body = arg
                    nested = depth + (least >= 2)
                    deepest = max(deepest, nested)
                    stack.append((body, times * max(least, 1), nested))
                else:
                    size += times
                    stack.append((arg, times, depth))
        elif isinstance(node, (list, tuple)):
            stack += [(child, times, depth) for child in node]
    return size, deepest


@functools.lru_cache(maxsize=MAX_PATTERNS)
def _compile(pattern: str) -> regex.Pattern[str]:
    """``pattern`` (checked by ``_checked``) compiled for matching with a timeout."""
    try:
        return regex.compile(pattern, regex.IGNORECASE)
    except (regex.error, OverflowError, RecursionError, MemoryError) as err:
        raise PatternError(pattern, _why(err)) from None


def _why(err: BaseException) -> str:
    if isinstance(err, (RecursionError, MemoryError)):
        return "nested too deeply"
    return str(err)

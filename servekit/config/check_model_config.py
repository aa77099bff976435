"""Checks of model configs: ``model-config.yml`` keys and types, and the cross-field rules.

YAML values are typed, and ``ModelConfig.build`` wants exactly a Java ``Integer``
or ``Boolean``: ``batchSize: "4"`` or ``maxBatchDelay: 50.0`` only log a WARN
and the default stays. ``check_keys`` catches that; ``check_effective`` looks at
one model's effective settings (defaults plus overrides) as TorchServe applies them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from servekit.config import schema
from servekit.config.findings import ERROR, WARNING, Finding, did_you_mean, show
from servekit.config.schema import Key

INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Where:
    """Where a key was written: the file and line, for findings."""

    file: str
    line: int | None


Locate = Callable[[str], Where]


def check_keys(config: Mapping[str, Any], locate: Locate, prefix: str = "") -> list[Finding]:
    """Unknown keys, wrong types and out-of-range values of a model config mapping.

    Keys that are not strings (YAML ``1:``, ``null:``) are skipped: the reader reports them.
    """
    findings = []
    for name, value in config.items():
        if not isinstance(name, str):
            continue
        key = schema.MODEL_CONFIG.get(name)
        where = locate(str(name))
        if key is None:
            findings.append(_unknown(str(name), value, where, prefix, schema.MODEL_CONFIG))
            continue
        problem = value_problem(key, value)
        if problem:
            code, why, fix = problem
            findings.append(
                Finding(
                    severity=ERROR,
                    code=code,
                    file=where.file,
                    line=where.line,
                    key=prefix + key.name,
                    value=show(value),
                    expected=key.allowed(),
                    fix=fix,
                    problem=why,
                )
            )
        elif key.name == "torchrun":
            findings += _check_torchrun(value, locate, prefix)
    return findings


def value_problem(key: Key, value: Any) -> tuple[str, str, str] | None:
    """``(code, problem, fix)`` when TorchServe would not take ``value`` for ``key``."""
    ignored = f"TorchServe logs a WARN and keeps the default ({key.default})"
    if key.kind == schema.INT:
        if type(value) is not int:
            return (
                "wrong-type",
                f"{type(value).__name__}, not an integer: {ignored}",
                f"write a bare integer, e.g. {key.name}: {_example(key, value)}",
            )
        if value > INT32_MAX:
            return (
                "out-of-range",
                f"does not fit a Java int: {ignored}",
                f"use {key.allowed()}, at most {INT32_MAX}",
            )
        if key.minimum is not None and value < key.minimum:
            return "out-of-range", _below(key, value), f"use {key.allowed()}"
        return None
    if key.kind == schema.BOOL and type(value) is not bool:
        return (
            "wrong-type",
            f"{type(value).__name__}, not a boolean: {ignored}",
            f"write {key.name}: true or {key.name}: false",
        )
    if (key.kind == schema.STRING and key.choices) and (
        not isinstance(value, str) or value.lower() not in key.choices
    ):
        return (
            "bad-value",
            "not an allowed value: TorchServe logs a WARN and ignores it",
            f"use {key.allowed()}",
        )
    if key.kind == schema.INT_LIST and not (
        isinstance(value, list) and all(type(v) is int for v in value)
    ):
        return (
            "wrong-type",
            "not a list of integers: TorchServe ignores the list",
            f"write {key.name}: [0, 1]",
        )
    if key.kind == schema.SECTION and not isinstance(value, dict):
        return (
            "wrong-type",
            f"{type(value).__name__}, not a mapping",
            f"write {key.name}: followed by indented 'option: value' lines",
        )
    return None


def _below(key: Key, value: int) -> str:
    if key.name == "minWorkers":
        return "TorchServe silently raises minWorkers below 1 to 1"
    if key.name in ("batchSize", "maxSequenceJobQueueSize", "maxNumSequence"):
        return f"TorchServe silently raises {key.name} below 1 to 1"
    return f"{key.name} below {key.minimum}: TorchServe ignores it or clamps it silently"


def _example(key: Key, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return int(key.default) if isinstance(key.default, int) else 1


def _check_torchrun(section: Mapping[str, Any], locate: Locate, prefix: str) -> list[Finding]:
    findings = []
    for name, value in section.items():
        if not isinstance(name, str):
            continue  # reported by the reader
        where = locate(f"torchrun.{name}")
        key = schema.TORCHRUN_KEYS.get(str(name))
        if key is None:
            findings.append(
                _unknown(str(name), value, where, f"{prefix}torchrun.", schema.TORCHRUN_KEYS)
            )
        elif (problem := value_problem(key, value)) is not None:
            code, why, fix = problem
            findings.append(
                Finding(
                    severity=ERROR,
                    code=code,
                    file=where.file,
                    line=where.line,
                    key=f"{prefix}torchrun.{name}",
                    value=show(value),
                    expected=key.allowed(),
                    fix=fix,
                    problem=why,
                )
            )
    return findings


def _unknown(name: str, value: Any, where: Where, prefix: str, known: Mapping[str, Key]) -> Finding:
    close = did_you_mean(name, known)
    fix = f"did you mean '{close}'?" if close else "remove it; see docs/config-keys.md"
    return Finding(
        severity=ERROR,
        code="unknown-key",
        file=where.file,
        line=where.line,
        key=prefix + name,
        value=show(value),
        expected="a key TorchServe 0.12 reads",
        fix=fix,
        problem="unknown key: TorchServe ignores it silently",
    )


# ----- cross-field rules on one model's effective config ------------------------------------
def check_effective(
    config: Mapping[str, Any], locate: Locate, queue_size: int, prefix: str = ""
) -> list[Finding]:
    """Rules between settings, on values that passed ``check_keys`` (others are skipped)."""

    def get(name: str) -> int | None:
        value = config.get(name)
        valid = type(value) is int and value_problem(schema.MODEL_CONFIG[name], value) is None
        return value if valid else None

    def finding(
        sev: str, code: str, key: str, expected: str, fix: str, why: str, near: str = ""
    ) -> Finding:
        where = locate(key) if key in config or not near else locate(near)
        value = show(config[key]) if key in config else "(unset)"
        return Finding(
            severity=sev,
            code=code,
            file=where.file,
            line=where.line,
            key=prefix + key,
            value=value,
            expected=expected,
            fix=fix,
            problem=why,
        )

    findings = []
    low, high = get("minWorkers"), get("maxWorkers")
    if low is not None and high is not None and low >= 1 and high < low:
        findings.append(
            finding(
                ERROR,
                "max-below-min",
                "maxWorkers",
                f"maxWorkers >= minWorkers ({low})",
                f"set maxWorkers: {low} or more",
                "TorchServe ignores both YAML worker counts and starts default_workers_per_model "
                "workers (one per CPU)",
            )
        )
    elif high is not None and "minWorkers" not in config:
        findings.append(
            finding(
                ERROR,
                "workers-ignored",
                "minWorkers",
                "minWorkers >= 1 next to maxWorkers",
                f"add minWorkers: 1 (or up to {max(high, 1)})",
                "without minWorkers TorchServe ignores the YAML workers and starts "
                "default_workers_per_model workers (one per CPU)",
                near="maxWorkers",
            )
        )
    elif low is not None and "maxWorkers" not in config:
        findings.append(
            finding(
                ERROR,
                "workers-ignored",
                "maxWorkers",
                f"maxWorkers >= minWorkers ({low})",
                f"add maxWorkers: {max(low, 1)}",
                "maxWorkers defaults to 0 < minWorkers: TorchServe ignores the YAML workers and "
                "starts default_workers_per_model workers (one per CPU)",
                near="minWorkers",
            )
        )
    batch = get("batchSize") or 1
    own_queue = get("jobQueueSize") or 0
    queue = own_queue if own_queue > 0 else queue_size
    if batch > queue:
        key = "jobQueueSize" if own_queue > 0 else "batchSize"
        findings.append(
            finding(
                ERROR,
                "queue-below-batch",
                key,
                f"a job queue of at least batchSize ({batch})",
                f"raise jobQueueSize (or job_queue_size) to {batch} or more, or lower batchSize",
                f"the job queue holds {queue} requests, fewer than a batch of {batch}: "
                "batches never fill and extra requests get 503",
            )
        )
    timeout = get("responseTimeout") or 120
    delay = get("maxBatchDelay")
    if delay is not None and timeout * 1000 <= delay:
        findings.append(
            finding(
                ERROR,
                "timeout-below-delay",
                "responseTimeout",
                f"responseTimeout (s) well above maxBatchDelay ({delay} ms)",
                f"set responseTimeout: {delay // 1000 + 30} or more, or lower maxBatchDelay",
                f"a batch may wait {delay} ms to fill but must be answered within "
                f"{timeout} s: workers are killed as stuck",
            )
        )
    retry = get("maxRetryTimeoutInSec")
    startup = get("startupTimeout") or 120
    if retry is not None and retry < startup:
        findings.append(
            finding(
                WARNING,
                "retry-below-startup",
                "maxRetryTimeoutInSec",
                f"maxRetryTimeoutInSec >= startupTimeout ({startup} s)",
                f"set maxRetryTimeoutInSec: {startup} or more, or lower startupTimeout",
                f"a worker may take {startup} s to start but TorchServe stops retrying after "
                f"{retry} s: a slow model is declared dead before it could load",
            )
        )
    return findings

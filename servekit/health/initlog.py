"""Why a model's workers cannot start: the reason TorchServe logged when ``initialize`` failed.

TorchServe's ``/ping`` and describe only say a worker is not ``READY``; the reason
is in ``logs/model_log.log``, in the worker's own lines::

    2026-11-22T04:23:34,280 [INFO ] W-9001-digits_1.0-stdout MODEL_LOG - Failed to load
        model digits, exception handler option 'top_k' is 42; it must be 1..10

``last_init_error`` returns that reason (``"handler option 'top_k' is 42; it must be
1..10"``) for the latest failure of a model, or ``None`` when there is none or a
worker of the model has loaded since (``WORKER_MODEL_LOADED`` in ``logs/ts_log.log``).

    >>> last_init_error(Path("logs"), "failing_model")  # doctest: +SKIP
    "model 'failing_model' fails to initialize on purpose (demo of init failure)"
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_LOG = "model_log.log"
TS_LOG = "ts_log.log"
TAIL_BYTES = 4_000_000  # logs grow for days; the latest failure is near the end
_TIME = r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3})"


def last_init_error(log_dir: Path, model: str) -> str | None:
    """The reason of ``model``'s latest ``initialize`` failure, unless it loaded since."""
    failure = _latest_failure(log_dir / MODEL_LOG, model)
    if failure is None:
        return None
    failed_at, reason = failure
    loaded_at = _latest_load(log_dir / TS_LOG, model)
    if loaded_at is not None and loaded_at > failed_at:
        return None
    return reason


def _worker(model: str) -> str:
    """A worker thread's name: ``W-<port>-<model>_<version>``."""
    return rf"W-\d+-{re.escape(model)}_[^\s_]+"


def _latest_failure(path: Path, model: str) -> tuple[str, str] | None:
    pattern = re.compile(
        rf"^{_TIME} \[\w+\s*\] {_worker(model)}-std(?:out|err) MODEL_LOG - "
        rf"(?:Failed to load model|Load model) {re.escape(model)}, exception (?P<reason>.*)$"
    )
    latest = None
    for line in _tail(path):
        match = pattern.match(line)
        if match:
            reason = match["reason"].strip() or "initialize raised an exception with no message"
            latest = (match["time"], reason)
    return latest


def _latest_load(path: Path, model: str) -> str | None:
    pattern = re.compile(rf"^{_TIME} .* {_worker(model)} State change \w+ -> WORKER_MODEL_LOADED$")
    latest = None
    for line in _tail(path):
        match = pattern.match(line)
        if match:
            latest = match["time"]
    return latest


def _tail(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as log:
        size = log.seek(0, 2)
        log.seek(max(0, size - TAIL_BYTES))
        lines = log.read().decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > TAIL_BYTES else lines

"""Why a model's workers cannot start: the reason TorchServe logged when ``initialize`` failed.

TorchServe's ``/ping`` and describe only say a worker is not ``READY``; the reason
is in ``logs/model_log.log``, in the worker's own lines::

    2026-11-22T04:23:34,280 [INFO ] W-9001-digits_1.0-stdout MODEL_LOG - Failed to load
        model digits, exception handler option 'top_k' is 42; it must be 1..10

A handler that cannot even be imported (a module missing from the archive) or an
``initialize`` that raises something else kills the worker instead; the reason is then the
last exception line of the traceback after ``Backend worker process died.``::

    ... W-9000-tiny_1.0-stdout MODEL_LOG - Backend worker process died.
    ... W-9000-tiny_1.0-stdout MODEL_LOG - Traceback (most recent call last):
    ...
    ... W-9000-tiny_1.0-stdout MODEL_LOG - ModuleNotFoundError: No module named 'handlers.common'

``last_init_error`` returns that reason (``"handler option 'top_k' is 42; it must be
1..10"``) for the latest failure of a model, or ``None`` when there is none or a
worker of the model has loaded since (``WORKER_MODEL_LOADED`` in ``logs/ts_log.log``).
``version`` narrows it to one version's workers, and ``since`` (a ``log_mark`` taken
before, say, registering that version) to what the logs gained after the mark.

    >>> last_init_error(Path("logs"), "failing_model")  # doctest: +SKIP
    "model 'failing_model' fails to initialize on purpose (demo of init failure)"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MODEL_LOG = "model_log.log"
TS_LOG = "ts_log.log"
TAIL_BYTES = 4_000_000  # logs grow for days; the latest failure is near the end
_TIME = r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3})"


@dataclass(frozen=True)
class LogMark:
    """How long the two logs were at a moment: what was written after it starts there."""

    model_log: int = 0
    ts_log: int = 0


def log_mark(log_dir: Path) -> LogMark:
    """The logs' sizes now (0 for a log not written yet)."""
    return LogMark(_size(log_dir / MODEL_LOG), _size(log_dir / TS_LOG))


def last_init_error(
    log_dir: Path, model: str, version: str | None = None, since: LogMark | None = None
) -> str | None:
    """The reason of ``model``'s latest ``initialize`` failure, unless it loaded since; of
    its ``version`` only, and only from what was logged after ``since``, when given."""
    since = since or LogMark()
    failure = _latest_failure(log_dir / MODEL_LOG, model, version, since.model_log)
    if failure is None:
        return None
    failed_at, reason = failure
    loaded_at = _latest_load(log_dir / TS_LOG, model, version, since.ts_log)
    if loaded_at is not None and loaded_at > failed_at:
        return None
    return reason


def _worker(model: str, version: str | None = None) -> str:
    """A worker thread's name: ``W-<port>-<model>_<version>``."""
    tail = r"[^\s_]+" if version is None else re.escape(version)
    return rf"W-\d+-{re.escape(model)}_{tail}"


def _latest_failure(
    path: Path, model: str, version: str | None = None, start: int = 0
) -> tuple[str, str] | None:
    """The latest ``(time, reason)``: a ``Failed to load model`` line, or the exception that
    ended a worker (``Backend worker process died.`` and the traceback after it)."""
    worker = _worker(model, version)
    line_of = re.compile(
        rf"^{_TIME} \[\w+\s*\] (?P<worker>{worker})-std(?:out|err) MODEL_LOG - (?P<text>.*)$"
    )
    failed = re.compile(
        rf"(?:Failed to load model|Load model) {re.escape(model)}, exception (?P<reason>.*)$"
    )
    latest = None
    dying: dict[str, _Death] = {}  # worker -> the traceback being read
    failed_load: set[str] = set()  # workers whose process logged its failure (then dies of it)
    for line in _tail(path, start):
        match = line_of.match(line)
        if not match:
            continue
        thread, text = match["worker"], match["text"]
        if thread in dying and not dying[thread].read(text):
            latest = _later(latest, dying.pop(thread).failure())
        if (found := failed.match(text)) is not None:
            reason = found["reason"].strip() or "initialize raised an exception with no message"
            latest = _later(latest, (match["time"], reason))
            failed_load.add(thread)
        elif text.startswith(WORKER_STARTS):
            failed_load.discard(thread)
        elif text.strip() == WORKER_DIED and thread not in failed_load:
            # after a logged failure the death says only "RuntimeError: 500 - Unknown exception"
            dying[thread] = _Death(match["time"])
    for death in dying.values():
        latest = _later(latest, death.failure())
    return latest


WORKER_DIED = "Backend worker process died."
WORKER_STARTS = "Listening on port:"  # a new process of the worker
# TorchServe, failing to import the handler file, retries it as one of its own default handlers:
# that second ModuleNotFoundError hides the first, which is the reason
_DEFAULT_HANDLER_RETRY = "No module named 'ts.torch_handler."
_EXCEPTION = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception|Exit|Interrupt)\w*(?::.*)?$")
_CHAINED = (
    "Traceback (most recent call last):",
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


class _Death:
    """A dead worker's traceback, line by line: its exception lines."""

    def __init__(self, time: str) -> None:
        self.time = time
        self.exceptions: list[str] = []

    def read(self, text: str) -> bool:
        """Take one more line of the worker's output; False when it is past the traceback."""
        if not text.strip() or text[0].isspace() or text.strip() in _CHAINED:
            return True
        if _EXCEPTION.match(text):
            self.exceptions.append(text.strip())
            return True
        return False

    def failure(self) -> tuple[str, str] | None:
        reasons = [e for e in self.exceptions if _DEFAULT_HANDLER_RETRY not in e]
        reasons = reasons or self.exceptions
        if not reasons:
            return None
        return self.time, f"the worker died: {_short(reasons[-1])}"


def _short(exception: str) -> str:
    """``ModuleNotFoundError: ...`` without the exception's module path."""
    kind, colon, text = exception.partition(":")
    return kind.rsplit(".", 1)[-1] + colon + text


def _later(
    latest: tuple[str, str] | None, failure: tuple[str, str] | None
) -> tuple[str, str] | None:
    if failure is None:
        return latest
    return failure if latest is None or failure[0] >= latest[0] else latest


def _latest_load(path: Path, model: str, version: str | None = None, start: int = 0) -> str | None:
    worker = _worker(model, version)
    pattern = re.compile(rf"^{_TIME} .* {worker} State change \w+ -> WORKER_MODEL_LOADED$")
    latest = None
    for line in _tail(path, start):
        match = pattern.match(line)
        if match:
            latest = match["time"]
    return latest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _tail(path: Path, start: int = 0) -> list[str]:
    """The log's lines from byte ``start`` (from the beginning when the log is now shorter:
    it was rolled over), at most its last ``TAIL_BYTES``."""
    if not path.is_file():
        return []
    with path.open("rb") as log:
        size = log.seek(0, 2)
        start = 0 if start > size else start
        begin = max(start, size - TAIL_BYTES)
        log.seek(begin)
        lines = log.read().decode("utf-8", errors="replace").splitlines()
    return lines[1:] if begin > start else lines

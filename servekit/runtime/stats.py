"""What one worker has served, for custom metadata and metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

PUBLISH_EVERY_SECONDS = 0.2
_refused: set[Path] = set()  # directories already warned about, once each
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]|^\.")


def stats_dir(model_name: str, tmpdir: Path | None = None) -> Path:
    """Where workers publish their counters: ``$TMPDIR/servekit-<uid>/<model>/<pid>.json``.

    A TorchServe worker inherits the server's ``TMPDIR``; tools run with the same one.
    The directory is this user's own (0700, checked before each write), so another user of
    a shared temporary directory can neither plant a symlink nor read the counters.
    """
    safe = _UNSAFE_NAME.sub("_", model_name) or "_"
    base = tmpdir if tmpdir is not None else Path(tempfile.gettempdir())
    return base / f"servekit-{os.getuid()}" / safe


def private_dir(directory: Path) -> bool:
    """Create ``directory`` and its parent 0700; True only if both are real directories of
    ours that nobody else can write (a planted symlink or a foreign directory is refused)."""
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            if not owned_privately(path):
                return False
        except OSError:
            return False
    return True


def owned_privately(path: Path) -> bool:
    """``path`` is a real directory (not a symlink) of this user that nobody else can write;
    ``OSError`` when it does not exist. The workers write only there, the exporter reads only
    there."""
    info = os.lstat(path)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


@dataclasses.dataclass
class WorkerStats:
    """Counters of one worker process; TorchServe runs one handler per worker."""

    requests: int = 0
    errors: int = 0
    batches: Counter[int] = dataclasses.field(default_factory=Counter)
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    published_at: float = 0.0
    # what `servekit exporter` reads: the handler's status, and why the worker is about to
    # exit on purpose ("recycle" or "retire"), so that its exit is not counted as a restart
    status: str = "initializing"
    leaving: str | None = None

    def record_batch(self, size: int, errors: int, stage_ms: dict[str, float]) -> None:
        self.requests += size
        self.errors += errors
        self.batches[size] += 1
        for stage, ms in stage_ms.items():
            self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + ms

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "requests": self.requests,
            "errors": self.errors,
            "batches": {str(size): n for size, n in sorted(self.batches.items())},
            "stage_ms_total": {k: round(v, 3) for k, v in sorted(self.stage_ms.items())},
        }

    def publish(self, model_name: str, force: bool = False) -> None:
        """Write this worker's counters for tools like servekit recycle (throttled)."""
        now = time.monotonic()
        if not force and now - self.published_at < PUBLISH_EVERY_SECONDS:
            return
        self.published_at = now
        directory = stats_dir(model_name)
        if not private_dir(directory):
            if directory not in _refused:
                _refused.add(directory)
                logger.warning("not publishing counters: %s is not a private directory", directory)
            return
        counters = {
            "pid": os.getpid(),
            "requests": self.requests,
            "errors": self.errors,
            "status": self.status,
            "leaving": self.leaving,
            "time": time.time(),
        }
        try:
            # a fresh name (O_EXCL), then a rename: a symlink at either name is never followed
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.getpid()}.", suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump(counters, out)
            os.replace(tmp, directory / f"{os.getpid()}.json")
        except OSError:
            pass  # counters are best effort; serving must not fail over them


HANDLER_STATUSES = ("initializing", "warming", "ready", "degraded", "draining")
LEAVING = ("recycle", "retire")
MAX_PUBLISHED_BYTES = 1 << 16  # a worker writes ~150 bytes


@dataclasses.dataclass(frozen=True)
class Published:
    """What a worker last wrote to ``<pid>.json``; a value of the wrong type reads as absent
    (``status`` as ``"unknown"``): the file is another process's and may be cut or stale."""

    requests: int | None
    status: str
    leaving: str | None


def read_published(directory: Path, pid: int) -> Published | None:
    """Worker ``pid``'s last published counters in ``directory``; None if unreadable."""
    try:  # non-blocking: a FIFO in its place must not hang the reader
        fd = os.open(directory / f"{pid}.json", os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return None
            document = json.loads(file.read(MAX_PUBLISHED_BYTES))
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep
        return None
    if not isinstance(document, dict):
        return None
    requests, status, leaving = (document.get(k) for k in ("requests", "status", "leaving"))
    return Published(
        requests if isinstance(requests, int) and not isinstance(requests, bool) else None,
        status if status in HANDLER_STATUSES else "unknown",
        leaving if leaving in LEAVING else None,
    )

"""One look at a running TorchServe: the health check's plain probe of every model, and
each worker's handler status as the worker last published it (no request to a worker)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from servekit.health.probe import Target, probe
from servekit.health.verdict import ModelHealth
from servekit.runtime.stats import Published, owned_privately, read_published, stats_dir

logger = logging.getLogger(__name__)
_refused: set[Path] = set()  # directories already warned about, once each


@dataclass(frozen=True)
class ModelView:
    health: ModelHealth
    handler_workers: Mapping[str, int] = field(default_factory=dict)
    """Workers by the status their handler published (``unknown``: nothing readable)."""

    @property
    def loadable(self) -> bool:
        """False once the log shows why ``initialize`` failed while short of READY workers."""
        return self.health.init_error is None


@dataclass(frozen=True)
class Snapshot:
    reachable: bool
    up: bool
    """``/ping`` answered 200."""
    models: tuple[ModelView, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    """How long taking it took."""


def take(target: Target, log_dir: Path | None, tmpdir: Path | None) -> Snapshot:
    """Never raises for server trouble: an unreachable server is ``reachable=False``."""
    started = time.monotonic()
    report = probe(target, log_dir=log_dir)
    views = tuple(
        ModelView(model, handler_statuses(model, tmpdir))
        for model in report.models
        if model.reason != "not registered"  # unregistered between the list and its describe
    )
    up = report.ping is not None and report.ping.healthy
    return Snapshot(
        reachable=not report.unreachable,
        up=up,
        models=views,
        error=report.error,
        seconds=time.monotonic() - started,
    )


def handler_statuses(model: ModelHealth, tmpdir: Path | None) -> dict[str, int]:
    """Workers by published status; a worker without a pid yet or a readable file is
    ``unknown``, so the statuses of a model add up to its workers."""
    directory = stats_dir(model.name, tmpdir)
    statuses: Counter[str] = Counter()
    for worker in model.worker_list:
        published = published_by(directory, worker.pid) if worker.pid else None
        statuses[published.status if published else "unknown"] += 1
    return dict(statuses)


def leaving(tmpdir: Path | None) -> Callable[[str, int], str | None]:
    """Why a worker process said it would exit, read from its last published file."""

    def reason(model: str, pid: int) -> str | None:
        published = published_by(stats_dir(model, tmpdir), pid)
        return published.leaving if published else None

    return reason


def published_by(directory: Path, pid: int) -> Published | None:
    """``read_published``, only from a directory only we can write (see ``trusted``)."""
    return read_published(directory, pid) if trusted(directory) else None


def trusted(directory: Path) -> bool:
    """True if ``directory`` and its parent (``servekit-<uid>``) are real directories of ours
    that nobody else can write, as the workers require before they publish. In a shared
    ``/tmp`` another user could create ``servekit-<uid>`` first (or a symlink to elsewhere):
    the workers then refuse to publish there, and its files, planted statuses, a ``recycle``
    hiding a crash, a FIFO that blocks the read, are not read either."""
    for path in (directory.parent, directory):
        try:
            private = owned_privately(path)
        except OSError:
            return False  # nothing published yet
        if not private:
            if path not in _refused:
                _refused.add(path)
                logger.warning("not reading worker statuses: %s is not a private directory", path)
            return False
    return True

"""One look at a running TorchServe: the health check's plain probe of every model, and
each worker's handler status as the worker last published it (no request to a worker)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from servekit.health.probe import Target, probe
from servekit.health.verdict import ModelHealth
from servekit.runtime.stats import read_published, stats_dir


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
    directory = stats_dir(model.name, tmpdir)
    statuses: Counter[str] = Counter()
    for worker in model.worker_list:
        if worker.pid:
            published = read_published(directory, worker.pid)
            statuses[published.status if published else "unknown"] += 1
    return dict(statuses)


def leaving(tmpdir: Path | None) -> Callable[[str, int], str | None]:
    """Why a worker process said it would exit, read from its last published file."""

    def reason(model: str, pid: int) -> str | None:
        published = read_published(stats_dir(model, tmpdir), pid)
        return published.leaving if published else None

    return reason

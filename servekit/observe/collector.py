"""The exporter's metric families, rendered from the latest snapshot and exit counts."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from servekit.health.probe import Target
from servekit.observe.restarts import ExitCounter
from servekit.observe.snapshot import ModelView, Snapshot, leaving, take
from servekit.runtime.stats import HANDLER_STATUSES

logger = logging.getLogger(__name__)

LABEL = "model_name"  # as TorchServe's own ts_* metrics and the handlers' servekit_* ones
STATUSES = (*HANDLER_STATUSES, "unknown")


@dataclass
class Watcher:
    """Polls TorchServe (``poll``) and keeps what the collector shows between polls."""

    target: Target
    log_dir: Path | None = None
    tmpdir: Path | None = None
    snapshot: Snapshot | None = None
    polled_at: float = 0.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.exits = ExitCounter()
        self.lock = threading.Lock()

    def poll(self) -> Snapshot:
        """Never raises: a poll that fails (a bug, an answer no parser expected) is logged
        with its traceback and shown as TorchServe down, so that alerts fire instead of the
        exporter exiting or its last figures going stale unnoticed."""
        try:
            snapshot = take(self.target, self.log_dir, self.tmpdir)
            with self.lock:
                self._count_exits(snapshot)
        except Exception as err:
            logger.exception("polling TorchServe at %s failed", self.target.management_url)
            snapshot = Snapshot(False, False, error=f"poll failed: {type(err).__name__}: {err}")
        with self.lock:
            self.snapshot, self.polled_at = snapshot, self.clock()
        return snapshot

    def _count_exits(self, snapshot: Snapshot) -> None:
        reason = leaving(self.tmpdir)
        for view in snapshot.models:
            # a worker id with its start time: a new server starts its ids over at 9000
            pids = {f"{w.id}@{w.start_time}": w.pid for w in view.health.worker_list}
            self.exits.update(view.health.name, pids, reason)
        if snapshot.reachable and snapshot.error is None:  # a complete list: the rest are gone
            self.exits.forget(self.exits.watched() - {v.health.name for v in snapshot.models})


class ExporterCollector(Collector):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterator[Metric]:
        watcher = self.watcher
        with watcher.lock:
            snapshot, polled_at = watcher.snapshot, watcher.polled_at
            restarts, recycles = dict(watcher.exits.restarts), dict(watcher.exits.recycles)
        age = watcher.clock() - polled_at if snapshot else float("nan")
        yield GaugeMetricFamily(
            "servekit_exporter_poll_age_seconds", "Seconds since the last poll of TorchServe", age
        )
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "servekit_exporter_poll_seconds", "How long the last poll took", snapshot.seconds
        )
        yield GaugeMetricFamily(
            "servekit_exporter_poll_ok",
            "1 if the last poll read the ping, the model list and every describe",
            int(snapshot.error is None),
        )
        yield GaugeMetricFamily(
            "servekit_torchserve_up",
            "1 if TorchServe answered: its /ping (any status) and its management API",
            int(snapshot.reachable),
        )
        yield GaugeMetricFamily(
            "servekit_torchserve_ping_healthy",
            "1 if /ping answered 200; TorchServe answers 500 once any model has stayed short "
            "of minWorkers past its maxRetryTimeoutInSec, while the others still serve",
            int(snapshot.up),
        )
        yield from model_families(snapshot.models)
        yield counter(
            "servekit_worker_restarts", "Worker processes that exited unplanned", restarts
        )
        yield counter("servekit_worker_recycles", "Worker processes recycled on purpose", recycles)


def described(value_of: Callable[[ModelView], float | None]) -> Callable[[ModelView], float | None]:
    """Only from a describe that was read: a failed one (timed out, 500) is no figure, not 0."""
    return lambda v: value_of(v) if v.health.described else None


GAUGES: tuple[tuple[str, str, Callable[[ModelView], float | None]], ...] = (
    ("servekit_model_workers", "Workers TorchServe lists", described(lambda v: v.health.workers)),
    ("servekit_model_workers_ready", "Workers READY", described(lambda v: v.health.ready)),
    ("servekit_model_min_workers", "minWorkers", described(lambda v: v.health.min_workers)),
    ("servekit_model_max_workers", "maxWorkers", described(lambda v: v.health.max_workers)),
    (
        "servekit_model_pending_requests",
        "Requests waiting in the job queue",
        lambda v: v.health.queue.pending_requests if v.health.queue else None,
    ),
    (
        "servekit_model_queue_remaining",
        "Free places in the job queue (pending + remaining = job_queue_size)",
        lambda v: v.health.queue.remaining_capacity if v.health.queue else None,
    ),
    ("servekit_model_healthy", "1 if the health check passes", lambda v: int(v.health.healthy)),
    (
        "servekit_model_loadable",
        "0 when short of READY workers and the log shows initialize failing",
        lambda v: int(v.loadable),
    ),
)


def model_families(views: tuple[ModelView, ...]) -> Iterator[Metric]:
    for name, help_text, value_of in GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=[LABEL])
        for view in views:
            value = value_of(view)
            if value is not None:
                family.add_metric([view.health.name], finite(value))
        yield family
    statuses = GaugeMetricFamily(
        "servekit_handler_workers",
        "Workers by the status their handler published",
        labels=[LABEL, "status"],
    )
    for view in filter(lambda v: v.health.described, views):
        for status in STATUSES:
            statuses.add_metric([view.health.name, status], view.handler_workers.get(status, 0))
    yield statuses


def counter(name: str, help_text: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=[LABEL])
    for model, value in sorted(counts.items()):
        family.add_metric([model], value)
    return family


def finite(value: float) -> float:
    """A describe's integer as a sample value: JSON allows any size, a float does not (an
    integer past 1e308 made every scrape fail with OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf

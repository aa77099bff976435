"""Recycle a model's workers that grew too big or served too many requests.

Gunicorn's ``max_requests`` for TorchServe, which has none. One worker at a time:

1. scale the model up by one worker and wait until it is READY, so the model never
   has fewer than ``minWorkers`` READY;
2. send the old worker ``SIGUSR1``: the toolkit's handler exits when idle (between
   requests, see ``servekit/runtime/recycle.py``) and TorchServe starts a fresh process in its
   place; wait until that one is READY;
3. retire the extra worker: signal it the same way and, while TorchServe is restarting
   it, scale back down (TorchServe removes the newest worker), so no request it had
   taken is dropped.

Memory is each worker's resident set (psutil; the describe API's ``memoryUsage`` when the
process is not visible from here); requests come from the counters the handler publishes
in ``$TMPDIR/servekit-<uid>/<model>/<pid>.json`` (run with the server's ``TMPDIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import requests

from servekit.errors import ServerError

READY = "READY"
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Worker:
    pid: int
    status: str
    rss_mb: float
    requests: int | None


@dataclass(frozen=True)
class Limits:
    max_memory_mb: float | None = None
    max_requests: int | None = None

    def reason(self, worker: Worker) -> str | None:
        """Why ``worker`` must be recycled, or ``None``."""
        if self.max_memory_mb is not None and worker.rss_mb > self.max_memory_mb:
            return f"memory {worker.rss_mb:.0f} MB > {self.max_memory_mb:g} MB"
        if self.max_requests is not None and (worker.requests or 0) >= self.max_requests:
            return f"{worker.requests} requests >= {self.max_requests}"
        return None


@dataclass(frozen=True)
class Recycled:
    old_pid: int
    new_pid: int
    reason: str
    seconds: float


def worker_rss_mb(pid: int, reported_bytes: object) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except (psutil.Error, ValueError):
        return float(reported_bytes) / 2**20 if isinstance(reported_bytes, int) else 0.0


def published_requests(stats_dir: Path, pid: int) -> int | None:
    try:
        value = json.loads((stats_dir / f"{pid}.json").read_text()).get("requests")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


class Recycler:
    """Recycles one model's workers through the management API (see the module doc)."""

    def __init__(
        self,
        management_url: str,
        model: str,
        stats_dir: Path,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = f"{management_url.rstrip('/')}/models/{quote(model, safe='')}"
        self.model = model
        self.stats_dir = stats_dir
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(headers or {})

    def describe(self) -> dict[str, Any]:
        response = self.session.get(self.url, timeout=10)
        if response.status_code != 200:
            raise ServerError(f"describe {self.model} failed: HTTP {response.status_code}")
        entry: dict[str, Any] = response.json()[0]
        return entry

    def workers(self, entry: Mapping[str, Any] | None = None) -> list[Worker]:
        entry = entry or self.describe()
        return [
            Worker(
                w["pid"],
                w["status"],
                worker_rss_mb(w["pid"], w.get("memoryUsage")),
                published_requests(self.stats_dir, w["pid"]),
            )
            for w in entry["workers"]
        ]

    def run(self, limits: Limits) -> list[Recycled]:
        """Recycle every worker over a limit, one at a time."""
        done = []
        for worker in self.workers():
            reason = limits.reason(worker)
            if reason is not None and worker.status == READY:
                done.append(self.recycle(worker.pid, reason))
        return done

    def recycle(self, pid: int, reason: str) -> Recycled:
        started = time.monotonic()
        entry = self.describe()
        slot = list(_pids(entry)).index(pid)
        count, max_workers = len(entry["workers"]), int(entry["maxWorkers"])
        self._scale(count + 1, max(max_workers, count + 1))
        self._wait(lambda e: _ready(e) >= count + 1, f"{count + 1} workers READY")
        self._drain(pid)
        self._wait(
            lambda e: pid not in _pids(e) and _ready(e) >= count + 1, f"worker {pid} replaced"
        )
        entry = self._retire_newest(count, max_workers)
        new_pid = int(entry["workers"][slot]["pid"])
        return Recycled(pid, new_pid, reason, round(time.monotonic() - started, 3))

    def _drain(self, pid: int) -> None:
        """Mark ``pid`` draining, then send customized describes until it took one and left."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + self.timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise ServerError(f"{self.model}: worker {pid} did not leave in {self.timeout:g} s")
            with contextlib.suppress(requests.RequestException):
                self.session.get(self.url, params={"customized": "true"}, timeout=self.timeout)

    def _retire_newest(self, count: int, max_workers: int) -> dict[str, Any]:
        """Scale back to ``count`` while the newest worker restarts: it holds no request."""
        newest = self.describe()["workers"][-1]["pid"]
        self._drain(newest)
        self._scale(count, count)  # TorchServe removes workers down to max_worker only
        if max_workers != count:
            self._scale(count, max_workers)
        return self._wait(
            lambda e: len(e["workers"]) == count and _ready(e) == count,
            f"back to {count} READY workers",
        )

    def _scale(self, workers: int, max_workers: int) -> None:
        params = {"min_worker": str(workers), "max_worker": str(max_workers), "synchronous": "true"}
        response = self.session.put(self.url, params=params, timeout=self.timeout)
        if response.status_code not in (200, 202):
            raise ServerError(
                f"scaling {self.model} to {workers} failed: "
                f"HTTP {response.status_code} {response.text[:200]}"
            )

    def _wait(self, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            entry = self.describe()
            if done(entry):
                return entry
            time.sleep(POLL_SECONDS)
        raise ServerError(f"{self.model}: timed out after {self.timeout:g} s waiting for {what}")


def _pids(entry: Mapping[str, Any]) -> Sequence[int]:
    return [w["pid"] for w in entry["workers"]]


def _ready(entry: Mapping[str, Any]) -> int:
    return sum(w["status"] == READY for w in entry["workers"])


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)

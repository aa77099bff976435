"""The worker's side of draining a server before it stops (``servekit stop``, ``servekit run``).

TorchServe 0.12 stops by closing every connection at once: whatever is queued or in a
worker's hands is cut off. The drainer (servekit/ops/drain.py) therefore drains first, and
tells the workers through a marker file beside their status files, one per server (keyed by
the frontend's pid, the workers' parent)::

    $TMPDIR/servekit-<uid>/.drain/<frontend pid>.json
    {"phase": "announce" | "refuse", "retry_after": 1, "allowance": {"<model>": n, ...},
     "drainer": <pid>, "drainer_started": <start time>, "frontend_started": <start time>}

A marker counts only while the drainer that wrote it runs (the same process: pid and start
time) and names this worker's frontend by its start time too: a drainer killed half-way (a
preStop hook past its grace period) or a marker left from an earlier server with the same pid
(a restarted container) changes nothing.

``announce``: the handler says ``draining`` (custom metadata, status files), so readiness
probes fail and load balancers stop sending; requests are served as usual.

``refuse``: what the server had accepted is served, what arrives now gets a fast 503 with
``Retry-After``. TorchServe hands a model's requests to its workers in arrival order (one
queue per model), so "accepted" is a count: the drainer allows each model the requests that
were queued or in workers' hands when refusing began (``allowance``; a missing model or
``null`` allows everything), and the workers take tickets from a shared counter
(``<frontend pid>.<model>.spent``, under ``flock``) before serving. The drainer reads the
counter to size the allowance, so a request is never both uncounted and refused.

While a marker exists each worker also keeps an acknowledgement file
(``<frontend pid>.w<worker pid>.json``: busy or idle, served and refused since it saw the
marker),
written by a watcher thread every ``ACK_SECONDS``, so the drainer knows when every accepted
request has been answered and the server is quiet. Outside a drain the cost is one ``stat``
per batch and per ``ACK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from servekit.runtime.stats import owned_privately, private_dir

logger = logging.getLogger(__name__)

ANNOUNCE, REFUSE = "announce", "refuse"
PHASES = (ANNOUNCE, REFUSE)
DRAIN_DIR = ".drain"  # a model's stats directory cannot start with "." (stats.stats_dir)
ACK_SECONDS = 0.05
START_TOLERANCE = 0.05  # seconds: two reads of one process's start time agree within this
MAX_MARKER_BYTES = 1 << 16
DEFAULT_RETRY_AFTER = 1


def drain_dir(tmpdir: Path | None = None) -> Path:
    """``$TMPDIR/servekit-<uid>/.drain``: this user's, beside the workers' status files."""
    base = tmpdir if tmpdir is not None else Path(tempfile.gettempdir())
    return base / f"servekit-{os.getuid()}" / DRAIN_DIR


def marker_path(directory: Path, frontend_pid: int) -> Path:
    return directory / f"{frontend_pid}.json"


def spent_path(directory: Path, frontend_pid: int, model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in model) or "_"
    return directory / f"{frontend_pid}.{safe}.spent"


def ack_path(directory: Path, frontend_pid: int, worker_pid: int) -> Path:
    return directory / f"{frontend_pid}.w{worker_pid}.json"


def started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or ``None`` if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


@dataclass(frozen=True)
class Marker:
    phase: str
    retry_after: int = DEFAULT_RETRY_AFTER
    allowance: Mapping[str, int] = field(default_factory=dict)
    """Requests each model may still serve once refusing; a model not named: all."""
    drainer: int = 0
    drainer_started: float = 0.0
    frontend_started: float = 0.0

    @classmethod
    def of_drainer(
        cls,
        phase: str,
        frontend_pid: int,
        retry_after: int = DEFAULT_RETRY_AFTER,
        allowance: Mapping[str, int] | None = None,
    ) -> Marker:
        """A marker written by this process for the frontend ``frontend_pid``."""
        return cls(
            phase,
            retry_after,
            dict(allowance or {}),
            os.getpid(),
            started(os.getpid()) or 0.0,
            started(frontend_pid) or 0.0,
        )

    def current(self, frontend_started: float | None) -> bool:
        """Written for the frontend that started at ``frontend_started`` by a drainer that
        still runs."""
        if frontend_started is None or self.drainer <= 0:
            return False
        if abs(self.frontend_started - frontend_started) > START_TOLERANCE:
            return False
        drainer = started(self.drainer)
        return drainer is not None and abs(drainer - self.drainer_started) <= START_TOLERANCE

    def to_json(self) -> str:
        return json.dumps(
            {
                "phase": self.phase,
                "retry_after": self.retry_after,
                "allowance": self.allowance,
                "drainer": self.drainer,
                "drainer_started": self.drainer_started,
                "frontend_started": self.frontend_started,
            }
        )

    @classmethod
    def parse(cls, text: str) -> Marker | None:
        """The marker in ``text``, or ``None`` when it is not one (a torn or foreign file)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep (fuzzing)
            return None
        if not isinstance(data, dict) or data.get("phase") not in PHASES:
            return None
        retry = data.get("retry_after", DEFAULT_RETRY_AFTER)
        if not isinstance(retry, int) or isinstance(retry, bool) or not 0 <= retry <= 3600:
            retry = DEFAULT_RETRY_AFTER
        raw = data.get("allowance") or {}
        allowance = {
            str(k): v
            for k, v in (raw.items() if isinstance(raw, dict) else ())
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0
        }
        drainer = data.get("drainer")
        if not isinstance(drainer, int) or isinstance(drainer, bool) or drainer < 0:
            drainer = 0
        return cls(
            data["phase"],
            retry,
            allowance,
            drainer,
            _time(data.get("drainer_started")),
            _time(data.get("frontend_started")),
        )


def _time(value: object) -> float:
    """A start time from JSON: a finite number >= 0, else 0 (which matches no process)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else 0.0


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by rename: a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_marker(path: Path) -> Marker | None:
    """The marker at ``path``; ``None`` when there is none (or it cannot be one of ours)."""
    try:
        with open(path, "rb") as handle:
            if not owned_privately(path.parent):
                return None
            return Marker.parse(handle.read(MAX_MARKER_BYTES).decode("utf-8", "replace"))
    except OSError:
        return None


def read_spent(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def take_tickets(path: Path, wanted: int, allowance: int | None) -> int:
    """Take up to ``wanted`` of ``allowance`` tickets from the counter at ``path`` (all of
    them when ``allowance`` is ``None``, still counted); how many were granted."""
    with open(path, "a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        try:
            spent = int(counter.read().strip() or 0)
        except ValueError:
            spent = 0
        granted = wanted if allowance is None else max(0, min(wanted, allowance - spent))
        counter.seek(0)
        counter.truncate()
        counter.write(str(spent + granted))
        counter.flush()
        return granted


class WorkerDrain:
    """One worker's view of its server's drain (see the module doc)."""

    def __init__(self, model: str, directory: Path | None = None) -> None:
        self.model = model
        self.directory = directory if directory is not None else drain_dir()
        self.frontend_pid = os.getppid()
        self.frontend_started = started(self.frontend_pid)
        self.worker_pid = os.getpid()
        self.busy_since: float | None = None
        self.served = 0
        self.refused = 0
        self._seen_marker = False
        self._counted_from = (0, 0)  # served, refused when this worker first saw the marker
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def marker_path(self) -> Path:
        return marker_path(self.directory, self.frontend_pid)

    def marker(self) -> Marker | None:
        """The drain of this worker's server, if one is under way (a current marker)."""
        marker = read_marker(self.marker_path)
        return marker if marker is not None and marker.current(self.frontend_started) else None

    def admit(self, count: int) -> tuple[int, int]:
        """How many of a batch's ``count`` requests (in arrival order) to serve, and the
        ``Retry-After`` seconds for the rest."""
        marker = self.marker()
        if marker is None or marker.phase != REFUSE or count == 0:
            self.served += count
            return count, DEFAULT_RETRY_AFTER
        allowance = marker.allowance.get(self.model)
        try:
            granted = take_tickets(
                spent_path(self.directory, self.frontend_pid, self.model), count, allowance
            )
        except OSError as err:  # no ticket counter: serve (losing a request is worse)
            logger.warning("%s: drain ticket counter unusable (%s): serving", self.model, err)
            granted = count
        self.served += granted
        self.refused += count - granted
        return granted, marker.retry_after

    def start_batch(self) -> None:
        self.busy_since = time.time()

    def end_batch(self) -> None:
        self.busy_since = None

    def watch(self) -> None:
        """Start the watcher thread that acknowledges a drain (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="drain-watch", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def acknowledge(self) -> bool:
        """Write this worker's acknowledgement while a marker exists; True if one does."""
        if not os.path.exists(self.marker_path) or self.marker() is None:
            self._seen_marker = False
            return False
        if not self._seen_marker:
            self._seen_marker = True
            self._counted_from = (self.served, self.refused)
            logger.info("%s worker %d: the server is draining", self.model, self.worker_pid)
        if not private_dir(self.directory):
            return True
        ack: dict[str, Any] = {
            "model": self.model,
            "pid": self.worker_pid,
            "busy": self.busy_since is not None,
            "served": self.served - self._counted_from[0],
            "refused": self.refused - self._counted_from[1],
            "at": time.time(),
        }
        with contextlib.suppress(OSError):
            write_atomically(
                ack_path(self.directory, self.frontend_pid, self.worker_pid), json.dumps(ack)
            )
        return True

    def _watch(self) -> None:
        while not self._stop.wait(ACK_SECONDS):
            try:
                self.acknowledge()
            except Exception:  # the watcher must never take the worker down
                logger.exception("%s: drain watcher", self.model)


def read_ack(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes()[:MAX_MARKER_BYTES])
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None

"""Recycle a model's workers that grew too big or served too many requests.

Gunicorn's ``max_requests`` for TorchServe, which has none. One worker at a time:

1. scale the model up by one worker and wait until it is READY, so the model never
   has fewer than ``minWorkers`` READY;
2. send the old worker ``SIGUSR1``: the toolkit's handler exits when idle (between
   requests, see ``servekit/runtime/recycle.py``) and TorchServe starts a fresh process in its
   place; wait until that one is READY;
3. retire the extra worker: send it ``SIGUSR2`` and describes until it holds one (it then
   renames itself ``sk-retired`` and waits), and scale back down while it does: TorchServe
   removes the newest worker, and that one holds no request of a user. (Letting it exit
   and scaling down during TorchServe's restart back-off leaves the restarted process
   running outside every worker list: TorchServe does not cancel a scheduled restart.)

Whatever stops a step half-way (an error, a timeout, ``SIGTERM`` or ``SIGINT``), the recycler
removes the extra worker it started and sets the model's ``minWorkers``/``maxWorkers`` back to
what they were before exiting; a retired worker not scaled down serves again after
``PARK_SECONDS`` (servekit/runtime/recycle.py). Scale calls TorchServe refuses while it is busy
(HTTP 500 ``ConcurrentModificationException``, 206 "scaling in progress") are retried a few
times. One recycler per model: a lock file in the stats directory keeps a second one out.

    servekit recycle --model leaky_model --max-memory-mb 800
    servekit recycle --model iris --max-requests 10000 --every 60

Memory is each worker's resident set (psutil; the describe API's ``memoryUsage`` when the
process is not visible from here); requests come from the counters the handler publishes
in ``$TMPDIR/servekit-<uid>/<model>/<pid>.json`` (run with the server's ``TMPDIR``).
Exit codes: 0 done (or nothing to do), 1 a recycle failed or another recycler holds the
model, 2 usage error, 3 unreachable; 128 + the signal number when stopped by SIGTERM/SIGINT
(after the clean-up).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from servekit.errors import ServerError
from servekit.health.cli import UsageError, base_url, load_keys, model_name
from servekit.health.probe import DEFAULT_MANAGEMENT_URL
from servekit.runtime.recycle import PARK_SECONDS, RETIRED_NAME
from servekit.runtime.stats import private_dir, read_published, stats_dir
from servekit.serve.management import (
    READY,
    Management,
    ManagementError,
    ManagementUnreachable,
    model_path,
)

POLL_SECONDS = 0.05
SCALE_ATTEMPTS = 6  # a scale call TorchServe refuses while busy, retried after 0.5, 1, ... s
RETRY_STATUSES = (500, 206)  # ConcurrentModificationException; "Workers scaling in progress"
LOCK_NAME = "recycle.lock"
ROLLBACK_PARK_SECONDS = 5.0  # how long a roll-back tries to park the extra worker
# A worker not parked yet is sent SIGUSR2 again this often, so the park it starts has at least
# PARK_SECONDS - RESIGNAL_SECONDS left; a parked worker is scaled down only while its park has
# more than SCALE_MARGIN_SECONDS left (the scale call and TorchServe's stopping it come first).
RESIGNAL_SECONDS = 5.0
SCALE_MARGIN_SECONDS = 5.0


class Interrupted(BaseException):  # like KeyboardInterrupt
    """``SIGTERM`` or ``SIGINT``: stop, after undoing the step under way."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Busy(ServerError):
    """Another recycler holds the model's lock."""


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
    published = read_published(stats_dir, pid)
    return None if published is None else published.requests


class Recycler:
    """Recycles one model's workers through the management API (see the module doc)."""

    def __init__(
        self,
        management_url: str,
        model: str,
        stats_dir: Path,
        timeout: float = 120.0,
        token: str | None = None,
    ) -> None:
        self.api = Management(management_url, token, timeout=min(timeout, 10.0))
        self.model = model
        self.stats_dir = stats_dir
        self.timeout = timeout
        self.kill: Callable[[int, int], None] = os.kill
        self.sleep: Callable[[float], None] = time.sleep
        self.park_ends: dict[int, float] = {}  # pid: monotonic time its park ends, at the latest

    def describe(self) -> dict[str, Any]:
        return self.api.entry(self.model)

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
        slot = list(worker_pids(entry)).index(pid)
        count = len(entry["workers"])
        original = (int(entry["minWorkers"]), int(entry["maxWorkers"]))
        finished = False
        try:
            self.scale(count + 1, max(original[1], count + 1))
            self.wait(lambda e: ready_count(e) >= count + 1, f"{count + 1} workers READY")
            self._drain(pid)
            self.wait(
                lambda e: pid not in worker_pids(e) and ready_count(e) >= count + 1,
                f"worker {pid} replaced",
            )
            entry = self.retire_newest(count)
            finished = True
        finally:
            with deferred_signals():
                if not finished:
                    self._remove_extra(count)
                self.scale(*original)
        new_pid = int(entry["workers"][slot]["pid"])
        return Recycled(pid, new_pid, reason, round(time.monotonic() - started, 3))

    def _remove_extra(self, count: int) -> None:
        """Roll back a step stopped half-way: back to ``count`` workers, the extra one (the
        newest) parked first when it can be, so it holds no request when it is removed."""
        entry = self.describe()
        if len(entry["workers"]) <= count:
            return
        newest = entry["workers"][-1]
        if newest["status"] == READY:
            # its handler catches SIGUSR2 only once it is READY; if it does not park in time,
            # it is removed anyway (and serves again after PARK_SECONDS if it was not)
            with contextlib.suppress(ServerError):
                self.remove_parked(count, int(newest["pid"]), ROLLBACK_PARK_SECONDS)
        self.scale(count, count)  # TorchServe removes workers down to max_worker only

    def remove_parked(self, count: int, pid: int, timeout: float) -> None:
        """Scale to ``count`` (TorchServe stops the newest, ``pid``) while ``pid`` is parked:
        at once when it is, with time left; when its park is about to end, once it has ended
        and the worker is parked again (within ``timeout``); else once it is parked."""
        if is_parked(pid) and self.park_left(pid) <= SCALE_MARGIN_SECONDS:
            self.until(lambda: not is_parked(pid), f"worker {pid}'s park to end", PARK_SECONDS + 5)
        if is_parked(pid):
            self.scale(count, count, parked=pid)
            return
        with self.parked(pid, timeout):
            self.scale(count, count, parked=pid)

    def _drain(self, pid: int) -> None:
        """Mark ``pid`` draining, then send customized describes until it took one and left."""
        with contextlib.suppress(ProcessLookupError):
            self.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + self.timeout
        while process_alive(pid):
            if time.monotonic() > deadline:
                raise ServerError(f"{self.model}: worker {pid} did not leave in {self.timeout:g} s")
            with contextlib.suppress(ServerError):
                self.api.request(
                    "GET", model_path(self.model), {"customized": "true"}, timeout=self.timeout
                )

    def retire_newest(self, count: int) -> dict[str, Any]:
        """Scale back to ``count`` while the newest worker holds a describe: no request. (The
        caller sets minWorkers/maxWorkers back.)"""
        newest = int(self.describe()["workers"][-1]["pid"])
        with self.parked(newest, self.timeout):
            self.scale(count, count, parked=newest)  # TorchServe removes down to max_worker
            entry = self.wait(
                lambda e: len(e["workers"]) == count and ready_count(e) == count,
                f"back to {count} READY workers",
            )
        if newest in worker_pids(entry):
            raise ServerError(f"{self.model}: the scale-down kept worker {newest}, not the newest")
        self.until(lambda: not process_alive(newest), f"worker {newest} to be stopped")
        return entry

    @contextlib.contextmanager
    def parked(self, pid: int, timeout: float) -> Iterator[None]:
        """``pid`` holding a customized describe (``SIGUSR2``, then describes until it does).
        It holds it at most PARK_SECONDS after the last signal (servekit/runtime/recycle.py):
        until it parks, it is signalled again every RESIGNAL_SECONDS."""
        self.signal_park(pid)
        stop = threading.Event()
        sender = threading.Thread(target=self._describe_until, args=(stop,), daemon=True)
        sender.start()
        left_by_error = True

        def parked_now() -> bool:
            if is_parked(pid):
                return True
            if self.park_left(pid) < PARK_SECONDS - RESIGNAL_SECONDS:
                self.signal_park(pid)
            return False

        try:
            self.until(parked_now, f"worker {pid} to hold a describe", timeout)
            yield
            left_by_error = False
        finally:
            stop.set()
            # Left by an error or a signal, the describe the worker may hold is answered only
            # when its park ends: not waited for, so the clean-up can still remove the worker
            # while it is parked (the sender sends nothing more once that describe returns).
            sender.join(0 if left_by_error else min(self.timeout, PARK_SECONDS + 5))

    def signal_park(self, pid: int) -> None:
        """``SIGUSR2``: park at the next describe (or, parked, stay PARK_SECONDS more)."""
        with contextlib.suppress(ProcessLookupError):
            self.kill(pid, signal.SIGUSR2)
        # sent now, so received later: the worker's park ends no sooner than this
        self.park_ends[pid] = time.monotonic() + PARK_SECONDS

    def park_left(self, pid: int) -> float:
        """Seconds left, at least, of ``pid``'s park (minus infinity: not signalled here)."""
        return self.park_ends.get(pid, -math.inf) - time.monotonic()

    def _describe_until(self, stop: threading.Event) -> None:
        """Customized describes, one at a time, until ``stop`` (its own HTTP session)."""
        api = Management(self.api.url, self.api.token, timeout=self.timeout)
        while not stop.is_set():
            with contextlib.suppress(ServerError):
                api.request("GET", model_path(self.model), {"customized": "true"})

    def until(self, done: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise ServerError(f"{self.model}: waited {timeout:g} s for {what}")
            self.sleep(POLL_SECONDS)

    def scale(self, workers: int, max_workers: int, parked: int | None = None) -> None:
        """Scale, again while TorchServe refuses because it is busy (the call is idempotent).
        ``parked``: the worker this scale-down stops, parked; no attempt is made once its
        park has SCALE_MARGIN_SECONDS or less left (it would be stopped serving again)."""
        for attempt in range(1, SCALE_ATTEMPTS + 1):
            if parked is not None and self.park_left(parked) <= SCALE_MARGIN_SECONDS:
                raise ServerError(
                    f"{self.model}: worker {parked}'s park ends in under "
                    f"{SCALE_MARGIN_SECONDS:g} s; not scaled down (it would be stopped serving)"
                )
            try:
                self.api.scale(self.model, workers, max_workers, timeout=self.timeout)
                return
            except ManagementError as err:
                if err.status not in RETRY_STATUSES or attempt == SCALE_ATTEMPTS:
                    raise
            self.sleep(0.5 * attempt)

    def wait(self, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        try:
            return self.api.wait_ready(
                self.model, workers=0, timeout=self.timeout, interval=POLL_SECONDS, until=done
            )
        except ManagementError as err:
            raise ServerError(f"{self.model}: waiting for {what}: {err}") from None


@contextlib.contextmanager
def interruptible(prog: str = "servekit recycle") -> Iterator[None]:
    """``SIGTERM`` and ``SIGINT`` raise ``Interrupted`` (where the clean-up of the step under
    way runs); only the first: later ones do not cut that clean-up short."""
    raised: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)
        print(f"{prog}: {signal.Signals(signum).name}: cleaning up", file=sys.stderr)

    before = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold ``SIGTERM``/``SIGINT`` while a clean-up runs; delivered when it ends.

    The Python handlers are swapped, not the thread's signal mask: with other threads running
    (the describe senders) the kernel delivers a signal to one that does not block it, and
    Python then runs the handler in the main thread anyway, inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    before = {s: signal.signal(s, hold) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])  # to the handlers in force again, now


@contextlib.contextmanager
def model_lock(directory: Path, model: str, command: str = "servekit recycle") -> Iterator[None]:
    """The model's operation lock (``recycle.lock`` in its stats directory), shared by every
    command that changes the model's workers (``servekit recycle``, ``servekit scale``, ...):
    ``Busy`` when another one on this machine holds it. Released when the process ends,
    however."""
    if not private_dir(directory):
        raise ServerError(f"cannot use {directory} for the model lock (not a private directory)")
    path = directory / LOCK_NAME
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid, _, holder = lock.read().strip().partition(" ")
            raise Busy(
                f"another {holder or 'servekit recycle'} (pid {pid or '?'}) is changing "
                f"{model}'s workers; one operation per model at a time (lock {path})"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {command}\n")
        lock.flush()
        yield


def worker_pids(entry: Mapping[str, Any]) -> Sequence[int]:
    return [w["pid"] for w in entry["workers"]]


def ready_count(entry: Mapping[str, Any]) -> int:
    return sum(w["status"] == READY for w in entry["workers"])


def is_parked(pid: int) -> bool:
    """The worker renamed itself: it holds a describe and waits to be scaled down."""
    try:
        return bool(psutil.Process(pid).name() == RETIRED_NAME)
    except psutil.Error:
        return False


def process_alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


# --- the command -----------------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit recycle",
        description="Recycle a model's workers past a memory or request limit, never below "
        "minWorkers READY. Run it with the server's TMPDIR (request counters live there). "
        "Exit codes: 0 done, 1 a recycle failed, 2 usage error, 3 server unreachable.",
    )
    parser.add_argument("--model", required=True, type=model_name)
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument("--max-memory-mb", type=_positive(float), metavar="MB")
    parser.add_argument("--max-requests", type=_positive(int), metavar="N")
    parser.add_argument("--stats-dir", type=Path, help="default: $TMPDIR/servekit-<uid>/<model>")
    parser.add_argument(
        "--every",
        type=_positive(float),
        metavar="SECONDS",
        help="check again every SECONDS until interrupted (default: once)",
    )
    parser.add_argument("--timeout", type=_positive(float), default=120.0)
    parser.add_argument("--json", action="store_true", help="one JSON line per recycled worker")
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="TorchServe's key_file.json, when token authorization is on",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_memory_mb is None and args.max_requests is None:
        parser.error("give --max-memory-mb, --max-requests or both")
    try:
        token = None if args.key_file is None else load_keys(args.key_file).management
    except UsageError as err:
        parser.error(str(err))
    limits = Limits(args.max_memory_mb, args.max_requests)
    directory = args.stats_dir or stats_dir(args.model)
    recycler = Recycler(args.management_url, args.model, directory, args.timeout, token)
    try:
        with interruptible(), model_lock(directory, args.model):
            while True:
                for done in recycler.run(limits):
                    print(_line(args.model, done, args.json), flush=True)
                if args.every is None:
                    return 0
                time.sleep(args.every)
    except Interrupted as stop:
        print(f"{parser.prog}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except ManagementUnreachable as err:
        print(f"{parser.prog}: error: {err}; is TorchServe running?", file=sys.stderr)
        return 3
    except ServerError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1


def _line(model: str, done: Recycled, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(done))
    return (
        f"{model}: worker {done.old_pid} -> {done.new_pid} ({done.reason}) in {done.seconds:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())

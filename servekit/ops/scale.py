"""Scale a model's workers up or down without losing a request.

TorchServe's own scale-down (``PUT /models/M?min_worker=1&max_worker=1``) stops the newest
workers at once, a busy one with the request in its hands. ``servekit scale`` removes one
worker at a time, the newest (the one TorchServe removes), after parking it: ``SIGUSR2`` and
customized describes until it holds one (it renames itself ``sk-retired``, see
servekit/runtime/recycle.py), so the worker stopped holds no request of a user; then it waits
until the model has one READY worker less and the parked process is gone. Scaling up sets
``minWorkers``/``maxWorkers`` and waits until that many workers are READY.

    servekit scale --model slow_model --workers 1
    servekit scale --model iris --workers 4 --max-workers 6 --json

The drain signals worker processes, so it runs beside the server (same machine, same process
namespace, same user); a worker it cannot see or signal is an error, never a plain
scale-down. One operation per model at a time: the lock is ``servekit recycle``'s.
``SIGTERM``/``SIGINT`` finish the removal under way (or leave that worker serving when it
cannot be parked in a few seconds), set ``minWorkers``/``maxWorkers`` to the workers there
are, and exit 128 + the signal number. Exit codes: 0 done, 1 a step failed (a timeout, an
unknown model, a worker out of reach), 2 usage error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from servekit.errors import ServerError
from servekit.health.cli import UsageError, base_url, load_keys, model_name
from servekit.health.probe import DEFAULT_MANAGEMENT_URL
from servekit.health.recycle import (
    POLL_SECONDS,
    ROLLBACK_PARK_SECONDS,
    Interrupted,
    Recycler,
    deferred_signals,
    interruptible,
    model_lock,
    process_alive,
    ready_count,
    worker_pids,
)
from servekit.runtime.recycle import RETIRED_NAME
from servekit.runtime.stats import stats_dir
from servekit.serve.management import (
    READY,
    Management,
    ManagementError,
    ManagementUnreachable,
)

PROG = "servekit scale"
MAX_WORKERS = 1000  # TorchServe takes far more and starts them all: a typo is not a plan
READY_STATUS = "ready"  # what a warmed-up handler's status says
WORKER_SCRIPT = "model_service_worker"  # in the command line of every TorchServe worker


@dataclass(frozen=True)
class Change:
    """A worker added or removed; ``workers`` is the model's count after it."""

    event: str  # "added" | "removed"
    model: str
    pid: int
    workers: int
    seconds: float


@dataclass(frozen=True)
class Summary:
    model: str
    before: int
    after: int
    min_workers: int
    max_workers: int
    seconds: float
    event: str = "scaled"


class Scaler:
    """Scales one model through ``recycler`` (its management API client, scale retries and
    parking); ``report`` is called with each worker added or removed."""

    def __init__(self, recycler: Recycler, report: Callable[[Change], None]) -> None:
        self.recycler = recycler
        self.model = recycler.model
        self.report = report
        self.drainable: Callable[[int], str | None] = drain_obstacle
        self.handler_status: Callable[[], tuple[str | None, int | None]] = lambda: handler_status(
            recycler.api, recycler.model
        )

    def run(self, workers: int, max_workers: int) -> Summary:
        started = time.monotonic()
        entry = self.entry()
        before = len(entry["workers"])
        if workers > before:
            self.up(entry, workers, max_workers)
        elif workers < before:
            self.down(entry, workers)
        self.recycler.scale(workers, max_workers)
        entry = self.recycler.describe()
        found = (entry.get("minWorkers"), entry.get("maxWorkers"))
        if found != (workers, max_workers):
            raise ServerError(
                f"{self.model}: asked for minWorkers {workers}, maxWorkers {max_workers}; "
                f"TorchServe has minWorkers {found[0]}, maxWorkers {found[1]}"
            )
        return Summary(self.model, before, workers, workers, max_workers, _since(started))

    def entry(self) -> dict[str, Any]:
        """The model's describe entry; an unknown model names the models served."""
        try:
            return self.recycler.describe()
        except ManagementError as err:
            if err.status != 404:
                raise
        try:
            served = ", ".join(sorted(self.recycler.api.models())) or "none"
        except ServerError:
            served = "(could not list them)"
        raise ServerError(f"model {self.model!r} is not registered; models served: {served}")

    def up(self, entry: Mapping[str, Any], workers: int, max_workers: int) -> None:
        started = time.monotonic()
        old = set(worker_pids(entry))
        self.recycler.scale(workers, max_workers)
        entry = self.recycler.wait(
            lambda e: len(e["workers"]) >= workers and ready_count(e) >= workers,
            f"{workers} workers READY",
        )
        added = [p for p in worker_pids(entry) if p not in old]
        self.wait_warm(added)
        for pid in added:
            self.report(Change("added", self.model, pid, workers, _since(started)))

    def wait_warm(self, pids: Sequence[int]) -> None:
        """Until the handler of each of ``pids`` says ``ready`` (a worker warming up in the
        background is READY at once); customized describes land on any worker, so it asks
        until each answered. A handler that reports no status: READY is all there is."""
        waiting = set(pids)
        deadline = time.monotonic() + self.recycler.timeout
        while waiting:
            status, pid = self.handler_status()
            if status is None and pid is None:
                return
            if status == READY_STATUS:
                waiting.discard(pid or 0)
            if waiting and time.monotonic() > deadline:
                raise ServerError(
                    f"{self.model}: worker(s) {', '.join(map(str, sorted(waiting)))} READY but "
                    f"not warmed up within {self.recycler.timeout:g} s (last handler status "
                    f"{status})"
                )
            if waiting:
                self.recycler.sleep(POLL_SECONDS)

    def down(self, entry: Mapping[str, Any], workers: int) -> None:
        """One worker at a time, the newest, parked before TorchServe stops it."""
        self.check_drainable(ready_pids(entry["workers"][workers:]))  # the ones TorchServe stops
        for count in range(len(entry["workers"]), workers, -1):
            self.remove_newest(count)

    def remove_newest(self, count: int) -> None:
        """From ``count`` workers, all READY first, to ``count - 1``."""
        started = time.monotonic()
        entry = self.recycler.wait(
            lambda e: len(e["workers"]) == count and ready_count(e) == count,
            f"{count} workers READY before removing one",
        )
        newest = int(worker_pids(entry)[-1])
        self.check_drainable([newest])
        try:
            self.recycler.retire_newest(count - 1)
        except BaseException:
            # Recycler.parked does not wait out a park it leaves by an error: settle finds
            # the worker still parked and finishes the removal in that park
            with deferred_signals():
                self.settle(count - 1, newest)
            raise
        self.report(Change("removed", self.model, newest, count - 1, _since(started)))

    def wait_removed(self, target: int, newest: int) -> None:
        """Until ``newest`` is off the model's list (TorchServe stops the newest workers down
        to ``target``)."""
        entry = self.recycler.wait(
            lambda e: newest not in worker_pids(e) or len(e["workers"]) <= target,
            f"worker {newest} to be removed",
        )
        if newest in worker_pids(entry):
            raise ServerError(f"{self.model}: the scale-down kept worker {newest}, not the newest")

    def settle(self, target: int, newest: int) -> None:
        """After a removal stopped half-way: finish it while ``newest`` is parked (or parked
        again within a few seconds), else leave it serving; either way minWorkers/maxWorkers
        end equal to the workers there are, so TorchServe changes nothing more."""
        entry = self.recycler.describe()
        if len(entry["workers"]) > target and newest in worker_pids(entry):
            with contextlib.suppress(ServerError):  # not parked in time: it serves on
                if process_alive(newest):
                    self.recycler.remove_parked(target, newest, ROLLBACK_PARK_SECONDS)
                else:  # being stopped already
                    self.recycler.scale(target, target)
                self.wait_removed(target, newest)
            entry = self.recycler.describe()
        count = len(entry["workers"])
        self.recycler.scale(count, count)

    def check_drainable(self, pids: Sequence[int]) -> None:
        problem = undrainable(self.model, pids, self.drainable)
        if problem is not None:
            raise ServerError(problem)


BESIDE = "the drain signals worker processes: run it beside the server (same machine, " + (
    "process namespace and user)"
)


def ready_pids(workers: Sequence[Mapping[str, Any]]) -> list[int]:
    """The pids of the READY ones of ``workers`` (a describe entry's): the ones a drain
    signals. A worker not started yet has no process (its pid reads -1, and kill(-1) would
    signal every process of this user)."""
    return [int(w["pid"]) for w in workers if w.get("status") == READY and int(w["pid"]) > 0]


def drain_obstacle(pid: int) -> str | None:
    """Why worker ``pid`` cannot be parked from here, and what to do, or ``None``: it must be
    a TorchServe worker process this user can signal whose handler catches ``SIGUSR2``."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return f"is not a process visible from here; {BESIDE}"
    if WORKER_SCRIPT not in command and name != RETIRED_NAME:
        return f"is not a TorchServe worker here (pid {pid} is {name!r}); {BESIDE}"
    try:
        os.kill(pid, 0)
    except OSError:
        return f"cannot be signalled by this user; {BESIDE}"
    if catches(pid, signal.SIGUSR2) is False:
        return (
            "does not catch SIGUSR2, so it cannot be drained: its handler is not a servekit "
            "ToolkitHandler, or its handler option recycle_on_sigusr1 is false"
        )
    return None


def undrainable(
    model: str, pids: Sequence[int], obstacle: Callable[[int], str | None] = drain_obstacle
) -> str | None:
    """The first of ``pids`` that cannot be drained, as an error line, or ``None``."""
    for pid in pids:
        found = obstacle(pid)
        if found is not None:
            return (
                f"{model}: worker {pid} {found}; nothing was changed (stopping it would cut "
                "the requests in its hands)"
            )
    return None


def handler_status(
    api: Management, model: str, version: str | None = None
) -> tuple[str | None, int | None]:
    """What a customized describe of ``model`` (``version``) says: the handler's status and
    its worker's pid (``None`` for a handler that reports neither: READY is all there is)."""
    entry = api.entry(model, version, customized=True)
    metadata = entry.get("customizedMetadata")
    if isinstance(metadata, str):
        with contextlib.suppress(ValueError):
            metadata = json.loads(metadata)
    if not isinstance(metadata, dict):
        return None, None
    worker = metadata.get("worker")
    pid = worker.get("pid") if isinstance(worker, dict) else None
    status = metadata.get("status")
    return (
        status if isinstance(status, str) else None,
        pid if isinstance(pid, int) else None,
    )


def catches(pid: int, signum: int) -> bool | None:
    """Whether process ``pid`` has a handler for ``signum`` (Linux ``/proc``), ``None`` when
    that cannot be read. The default action of SIGUSR2 would end the worker, request and all."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


# --- the command -----------------------------------------------------------------------------


def worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a model keeps at least 1 worker; to take it off the server, "
            "unregister it (DELETE /models/<name>)"
        )
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_WORKERS} workers")
    return value


def timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Scale a model's workers without losing a request: down one worker at a "
        "time, each parked (holding no request) before TorchServe stops it; up by waiting "
        "until the workers are READY. Run it beside the server, with its TMPDIR. Exit codes: "
        "0 done, 1 a step failed, 2 usage error, 3 server unreachable.",
    )
    parser.add_argument("--model", required=True, type=model_name)
    parser.add_argument("--workers", required=True, type=worker_count, metavar="N")
    parser.add_argument(
        "--max-workers", type=worker_count, metavar="K", help="maxWorkers (default: N)"
    )
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=120.0,
        metavar="SECONDS",
        help="for each step: workers READY, a worker parked, a worker gone (default 120)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="TorchServe's key_file.json, when token authorization is on",
    )
    parser.add_argument(
        "--stats-dir", type=Path, help="where the model lock lives (default: as servekit recycle)"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    max_workers = args.workers if args.max_workers is None else args.max_workers
    if max_workers < args.workers:
        parser.error(f"--max-workers {max_workers} is below --workers {args.workers}")
    try:
        token = None if args.key_file is None else load_keys(args.key_file).management
    except UsageError as err:
        parser.error(str(err))
    directory = args.stats_dir or stats_dir(args.model)
    recycler = Recycler(args.management_url, args.model, directory, args.timeout, token)
    scaler = Scaler(recycler, lambda change: print(_line(change, args.json), flush=True))
    try:
        with interruptible(PROG), model_lock(directory, args.model, PROG):
            summary = scaler.run(args.workers, max_workers)
    except Interrupted as stop:
        print(f"{PROG}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except ManagementUnreachable as err:
        print(f"{PROG}: error: {err}; is TorchServe running?", file=sys.stderr)
        return 3
    except ServerError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(_line(summary, args.json), flush=True)
    return 0


def _line(done: Change | Summary, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(done))
    if isinstance(done, Change):
        return (
            f"{done.model}: {done.event} worker {done.pid} ({done.workers} now) "
            f"in {done.seconds:.1f} s"
        )
    return (
        f"{done.model}: {done.before} -> {done.after} workers (minWorkers {done.min_workers}, "
        f"maxWorkers {done.max_workers}) in {done.seconds:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())

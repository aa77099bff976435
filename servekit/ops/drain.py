"""``servekit stop``: drain a running TorchServe, then stop it, losing no accepted request.

TorchServe 0.12 stops (``torchserve --stop``, SIGTERM to its frontend) by closing every
connection at once: the requests it had queued or was running are cut off. Draining first:

1. **announce** (``--announce`` seconds): every toolkit handler says ``draining`` (custom
   metadata, status files), so readiness probes fail and load balancers stop sending; the
   server still serves everything.
2. **refuse**: the requests the server had accepted (queued, or in a worker's hands) are
   served; each one that arrives after gets a fast 503 with ``Retry-After`` (and, as every
   TorchServe 4xx/5xx, ``Connection: close``). See servekit/runtime/draining.py.
3. when nothing is queued, every worker is idle and no request came for ``QUIET_SECONDS``
   (or at ``--timeout``), TorchServe is stopped (SIGTERM to the frontend) and waited for.

The server is found through TorchServe's pid file (``$TMPDIR/.model_server.pid``, written by
``torchserve --start``) or ``--pid``; its management address and its workers' ``TMPDIR``
come from the frontend's own command line and environment, so ``servekit stop`` needs no
other argument on the machine (or in the container) of the server.

Exit codes: 0 drained and stopped; 1 stopped at the deadline with requests still queued or
running (the count is printed); 2 usage error; 3 no server running. Ctrl-C or SIGTERM during
the drain gives up the drain: the marker is removed and the server serves on.
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from servekit.errors import ServerError
from servekit.health.cli import UsageError, base_url, load_keys
from servekit.health.recycle import deferred_signals
from servekit.ops.frontend import PID_FILE, Frontend, NoServer, from_pid, pid_file
from servekit.runtime.draining import (
    ANNOUNCE,
    DEFAULT_RETRY_AFTER,
    REFUSE,
    Marker,
    ack_path,
    drain_dir,
    marker_path,
    read_ack,
    read_spent,
    spent_path,
    write_atomically,
)
from servekit.runtime.stats import private_dir
from servekit.serve.management import (
    READY,
    Management,
    ManagementError,
    ManagementUnreachable,
)

DEFAULT_ANNOUNCE = 2.0
DEFAULT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # TorchServe's own stop, after the drain
QUIET_SECONDS = 0.3
POLL_SECONDS = 0.05
NO_ACK_GRACE = 1.0  # a worker that never acknowledges (not a toolkit handler) is not waited for


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class DrainReport:
    announced_s: float = 0.0
    drained_s: float = 0.0
    stopped_s: float = 0.0
    answered: int = 0
    """Requests the workers served from the start of the drain until the stop."""
    refused: int = 0
    """Requests that arrived once refusing began: a 503 with Retry-After."""
    left: int = 0
    """Requests still queued or running at the deadline (cut off by the stop)."""
    clean: bool = True
    models: dict[str, int] = field(default_factory=dict)
    """Each model's allowance: what it had accepted when refusing began."""
    refusing_at: float = 0.0
    """When refusing began (seconds since the epoch): a request sent before it was accepted."""

    def line(self) -> str:
        total = self.announced_s + self.drained_s + self.stopped_s
        verdict = (
            "every accepted request answered"
            if self.clean
            else f"{self.left} request(s) still queued or running at the deadline were cut off"
        )
        return (
            f"drained and stopped in {total:.1f} s (announce {self.announced_s:.1f} s, drain "
            f"{self.drained_s:.1f} s, stop {self.stopped_s:.1f} s): {self.answered} answered, "
            f"{self.refused} refused with 503 + Retry-After; {verdict}"
        )


class Drainer:
    """Drains one frontend's models, then stops it (the module doc)."""

    def __init__(
        self,
        frontend: Frontend,
        api: Management,
        announce: float = DEFAULT_ANNOUNCE,
        timeout: float = DEFAULT_TIMEOUT,
        retry_after: int = DEFAULT_RETRY_AFTER,
        say: Callable[[str], None] = print,
    ) -> None:
        self.frontend = frontend
        self.api = api
        self.announce = announce
        self.timeout = timeout
        self.retry_after = retry_after
        self.say = say
        self.directory = drain_dir(frontend.tmpdir)
        self.marker = marker_path(self.directory, frontend.pid)
        self.quiet = QUIET_SECONDS

    # -- the whole drain -------------------------------------------------------------------

    def run(self, stop: bool = True) -> DrainReport:
        report = DrainReport()
        if not private_dir(self.directory):
            raise ServerError(f"cannot use {self.directory} for the drain marker (not private)")
        self.api.models()  # a wrong address or key fails here, before readiness drops
        with self._lock():
            return self._run(report, stop)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One drain of a server at a time (a second one would clear the first's marker)."""
        path = self.directory / f"{self.frontend.pid}.lock"
        with open(path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "?"
                raise ServerError(
                    f"another servekit stop (pid {holder}) is draining this server"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _run(self, report: DrainReport, stop: bool) -> DrainReport:
        started = time.monotonic()
        try:
            self._write(ANNOUNCE)
            self.say(
                f"draining: handlers report `draining` (readiness fails) for {self.announce:g} s"
            )
            time.sleep(self.announce)
            report.announced_s = time.monotonic() - started
            refusing = time.monotonic()
            report.refusing_at = time.time()
            report.models = self._refuse()
            self.say(
                "refusing new requests (503 + Retry-After); serving what was accepted: "
                + (", ".join(f"{m} {n}" for m, n in report.models.items()) or "no model")
            )
            report.left = self._wait_quiet(refusing + self.timeout - report.announced_s)
            report.clean = report.left == 0
            report.drained_s = time.monotonic() - refusing
            report.answered, report.refused = self._served()
            if stop:
                stopping = time.monotonic()
                with deferred_signals():  # stopping has begun: a signal cannot undo it
                    self._stop_frontend()
                report.stopped_s = time.monotonic() - stopping
        except BaseException:
            if not stop or _alive(self.frontend.pid):
                self._clear()  # a drain given up: the server serves on as before
            raise
        self._clear()
        return report

    # -- steps -------------------------------------------------------------------------------

    def _write(self, phase: str, allowance: dict[str, int] | None = None) -> None:
        marker = Marker.of_drainer(phase, self.frontend.pid, self.retry_after, allowance)
        write_atomically(self.marker, marker.to_json())

    def _versions(self) -> dict[str, list[dict[str, Any]]]:
        """Every model's describe entries, all versions (each has its own queue)."""
        return {model: self.api.describe(model, "all") for model in self.api.models()}

    def _refuse(self) -> dict[str, int]:
        """Start refusing: first with every request still allowed (and counted), then with
        each model's allowance: its spent tickets, plus what is queued, plus a full batch per
        worker (a batch taken from the queue just before it could be counted)."""
        self._write(REFUSE)
        allowance: dict[str, int] = {}
        versions = self._versions()
        self.quiet = QUIET_SECONDS + max(
            (_int(e.get("maxBatchDelay")) / 1000 for es in versions.values() for e in es),
            default=0.0,
        )
        for model, entries in versions.items():
            queued = sum(Management.pending_requests(e) for e in entries)
            batches = sum(
                len(e.get("workers") or []) * max(1, _int(e.get("batchSize"))) for e in entries
            )
            spent = read_spent(spent_path(self.directory, self.frontend.pid, model))
            allowance[model] = spent + queued + batches
        self._write(REFUSE, allowance)
        return allowance

    def _wait_quiet(self, deadline: float) -> int:
        """Until every accepted request was answered: nothing queued, every worker idle and
        nothing served for ``self.quiet`` (the longest ``maxBatchDelay`` and a margin: a batch
        the frontend is still filling is neither queued nor in a worker); the requests left
        at ``deadline`` otherwise. Refusals do not count: new arrivals cannot keep the drain
        going."""
        since = time.time()
        last_served: int | None = None
        quiet_from = time.monotonic()
        left = 0
        while True:
            versions = self._versions()
            queued = sum(Management.pending_requests(e) for es in versions.values() for e in es)
            busy = self._busy_workers(versions, since)
            served = self._served()[0]
            if served != last_served or queued or busy:
                last_served = served
                quiet_from = time.monotonic()
            elif time.monotonic() - quiet_from >= self.quiet:
                return 0
            left = queued + busy
            if time.monotonic() >= deadline:
                return max(left, 1) if (queued or busy) else 0
            time.sleep(POLL_SECONDS)

    def _busy_workers(self, versions: dict[str, list[dict[str, Any]]], since: float) -> int:
        """READY workers not (yet) seen idle after ``since``; a worker that never
        acknowledges within ``NO_ACK_GRACE`` (not a toolkit handler) is not counted."""
        busy = 0
        for entries in versions.values():
            for entry in entries:
                for worker in entry.get("workers") or []:
                    if worker.get("status") != READY or not isinstance(worker.get("pid"), int):
                        continue
                    ack = read_ack(ack_path(self.directory, self.frontend.pid, worker["pid"]))
                    if ack is None:
                        busy += time.time() - since < NO_ACK_GRACE
                    elif ack.get("busy") or _float(ack.get("at")) < since:
                        busy += 1
        return busy

    def _served(self) -> tuple[int, int]:
        answered = refused = 0
        for path in self.directory.glob(f"{self.frontend.pid}.w*.json"):
            ack = read_ack(path)
            if ack is not None:
                answered += _int(ack.get("served"))
                refused += _int(ack.get("refused"))
        return answered, refused

    def _stop_frontend(self) -> None:
        """SIGTERM the frontend (as ``torchserve --stop`` does), wait, SIGKILL if it hangs."""
        try:
            process = psutil.Process(self.frontend.pid)
            process.terminate()
            process.wait(STOP_TIMEOUT)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            self.say(f"TorchServe did not stop within {STOP_TIMEOUT:g} s: killing it")
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(OSError):
            pid_file(self.frontend.tmpdir).unlink()

    def _clear(self) -> None:
        """This drain's files: the marker, the ticket counters, the acknowledgements (the lock
        goes when the drain ends)."""
        for path in self.directory.glob(f"{self.frontend.pid}.*"):
            if path.suffix != ".lock":
                with contextlib.suppress(OSError):
                    path.unlink()


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM/SIGINT raise ``Interrupted`` (the first only)."""
    raised: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    before = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


# --- the command -----------------------------------------------------------------------------


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 86400 seconds")
    return value


def positive_pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id (a number > 0)")
    return value


def check_drain_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.announce >= args.timeout:
        parser.error(
            f"--announce {args.announce:g} must be shorter than --timeout {args.timeout:g} "
            "(the timeout bounds the whole drain, announce included)"
        )


def retry_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 3600 seconds")
    return value


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    """The drain's options, shared by ``servekit stop`` and ``servekit run``."""
    parser.add_argument(
        "--announce",
        type=seconds,
        default=DEFAULT_ANNOUNCE,
        metavar="SECONDS",
        help="how long handlers report `draining` (readiness fails) before new requests are "
        f"refused (default {DEFAULT_ANNOUNCE:g})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="the longest the whole drain takes; at the deadline TorchServe is stopped anyway "
        f"(default {DEFAULT_TIMEOUT:g}; at least the models' responseTimeout)",
    )
    parser.add_argument(
        "--retry-after",
        type=retry_seconds,
        default=DEFAULT_RETRY_AFTER,
        metavar="SECONDS",
        help=f"the Retry-After of the 503s sent while draining (default {DEFAULT_RETRY_AFTER})",
    )
    parser.add_argument("--management-url", type=base_url, help="default: from the server's config")
    parser.add_argument(
        "--key-file", type=Path, metavar="PATH", help="key_file.json, when tokens are on"
    )
    parser.add_argument("--json", action="store_true", help="the report as one JSON line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit stop",
        description="Drain the running TorchServe (readiness fails, then new requests get a "
        "503 with Retry-After while every accepted one is answered), then stop it. Run it "
        "with the server's TMPDIR, or give --pid. Exit codes: 0 drained and stopped, 1 "
        "stopped at the deadline with requests cut off, 2 usage error, 3 no server running.",
    )
    parser.add_argument(
        "--pid", type=positive_pid, help="the TorchServe frontend's pid (default: pid file)"
    )
    parser.add_argument("--pid-file", type=Path, help=f"default: $TMPDIR/{PID_FILE}")
    add_drain_arguments(parser)
    return parser


def drain_and_stop(
    frontend: Frontend, args: argparse.Namespace, say: Callable[[str], None]
) -> DrainReport:
    token = None if args.key_file is None else load_keys(args.key_file).management
    api = Management(args.management_url or frontend.management_url, token)
    drainer = Drainer(frontend, api, args.announce, args.timeout, args.retry_after, say)
    return drainer.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_drain_arguments(parser, args)
    prog = parser.prog

    def say(text: str) -> None:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)

    try:
        frontend = from_pid(args.pid, args.pid_file)
        with interruptible():
            report = drain_and_stop(frontend, args, say)
    except UsageError as err:
        parser.error(str(err))
    except Interrupted as stop:
        say(f"{stop}: drain given up; the server serves on")
        return 128 + stop.signum
    except NoServer as err:
        say(str(err))
        return 3
    except ManagementUnreachable as err:
        say(f"error: {err}")
        return 3
    except (ServerError, ManagementError, OSError) as err:
        say(f"error: {err}")
        return 1
    print(json.dumps(asdict(report)) if args.json else f"{prog}: {report.line()}", flush=True)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())

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
import json
import math
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

    # -- the whole drain -------------------------------------------------------------------

    def run(self, stop: bool = True) -> DrainReport:
        report = DrainReport()
        if not private_dir(self.directory):
            raise ServerError(f"cannot use {self.directory} for the drain marker (not private)")
        started = time.monotonic()
        try:
            self._write(Marker(ANNOUNCE, self.retry_after))
            self.say(
                f"draining: handlers report `draining` (readiness fails) for {self.announce:g} s"
            )
            time.sleep(self.announce)
            report.announced_s = time.monotonic() - started
            refusing = time.monotonic()
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
                self._stop_frontend()
                report.stopped_s = time.monotonic() - stopping
        except BaseException:
            if not stop or _alive(self.frontend.pid):
                self._clear()  # a drain given up: the server serves on as before
            raise
        self._clear()
        return report

    # -- steps -------------------------------------------------------------------------------

    def _write(self, marker: Marker) -> None:
        write_atomically(self.marker, marker.to_json())

    def _versions(self) -> dict[str, list[dict[str, Any]]]:
        """Every model's describe entries, all versions (each has its own queue)."""
        return {model: self.api.describe(model, "all") for model in self.api.models()}

    def _refuse(self) -> dict[str, int]:
        """Start refusing: first with every request still allowed (and counted), then with
        each model's allowance: its spent tickets, plus what is queued, plus a full batch per
        worker (a batch taken from the queue just before it could be counted)."""
        self._write(Marker(REFUSE, self.retry_after))
        allowance: dict[str, int] = {}
        for model, entries in self._versions().items():
            queued = sum(_int(e.get("pendingRequests")) for e in entries)
            batches = sum(
                len(e.get("workers") or []) * max(1, _int(e.get("batchSize"))) for e in entries
            )
            spent = read_spent(spent_path(self.directory, self.frontend.pid, model))
            allowance[model] = spent + queued + batches
        self._write(Marker(REFUSE, self.retry_after, allowance))
        return allowance

    def _wait_quiet(self, deadline: float) -> int:
        """Until nothing is queued, every worker is idle and nothing arrived for
        ``QUIET_SECONDS``; the requests left at ``deadline`` otherwise."""
        since = time.time()
        last_counts: tuple[int, int] | None = None
        quiet_from = time.monotonic()
        left = 0
        while True:
            versions = self._versions()
            queued = sum(_int(e.get("pendingRequests")) for es in versions.values() for e in es)
            busy = self._busy_workers(versions, since)
            counts = self._served()
            if counts != last_counts or queued or busy:
                last_counts = counts
                quiet_from = time.monotonic()
            elif time.monotonic() - quiet_from >= QUIET_SECONDS:
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
        for path in self.directory.glob(f"{self.frontend.pid}.*"):
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
    parser.add_argument("--pid", type=int, help="the TorchServe frontend's pid (default: pid file)")
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

"""``servekit run -- torchserve --start --foreground ...``: run TorchServe and, on SIGTERM or
SIGINT, drain it before it stops (servekit/ops/drain.py).

What a container's init (``tini``) or ``docker stop`` signals: ``torchserve --start
--foreground`` alone would die at once (the Python launcher ends and leaves its Java frontend
running, orphaned, until the runtime kills it with whatever it holds). Here TorchServe runs in
a process group of its own, so a signal sent to this command's group (``tini -g``) reaches
this supervisor only; it drains the server (announce, refuse new requests with 503 +
Retry-After, answer every accepted one), stops it and exits. A second signal during the drain
is ignored (the drain has a deadline: ``--timeout``); SIGKILL ends everything, as ever.

Exit codes: TorchServe's own when it exits by itself; after a signal 0 when the drain answered
every accepted request, 1 when the deadline cut some off; 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import psutil

from servekit.errors import ServerError
from servekit.health.cli import UsageError
from servekit.ops.drain import (
    STOP_TIMEOUT,
    add_drain_arguments,
    check_drain_arguments,
    drain_and_stop,
)
from servekit.ops.frontend import MAIN_CLASS, Frontend, NoServer, from_pid
from servekit.serve.management import ManagementError, ManagementUnreachable
from servekit.serve.processes import stop_group

FRONTEND_WAIT = 10.0  # how long after a signal to look for a frontend still starting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit run",
        description="Run a TorchServe command (torchserve --start --foreground ...) and drain "
        "the server on SIGTERM/SIGINT before it stops: readiness fails, new requests get 503 "
        "+ Retry-After, every accepted request is answered. Exit codes: TorchServe's own, or "
        "after a signal 0 (drained) / 1 (deadline cut requests off); 2 usage error.",
    )
    add_drain_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- torchserve --start ...")
    return parser


def frontend_of(launcher: subprocess.Popen[bytes], wait: float) -> Frontend | None:
    """The Java frontend the launcher started (its child), or ``None``."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(launcher.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if MAIN_CLASS in child.cmdline():
                        return from_pid(child.pid)
        if launcher.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_drain_arguments(parser, args)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error(
            "give the TorchServe command after --, e.g. -- torchserve --start --foreground"
        )
    if "--start" in command and "--foreground" not in command:
        parser.error("torchserve must run with --start --foreground under servekit run")
    prog = parser.prog

    def say(text: str) -> None:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)

    signalled = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            say(f"{signal.Signals(signum).name} again: the drain goes on (deadline --timeout)")
            return
        received.append(signum)
        signalled.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        launcher = subprocess.Popen(command, start_new_session=True)
    except OSError as err:
        say(f"cannot start {command[0]}: {err.strerror or err}")
        return 2
    while launcher.poll() is None and not signalled.wait(0.2):
        pass
    if not signalled.is_set():
        return launcher.returncode
    say(f"{signal.Signals(received[0]).name}: draining TorchServe before it stops")
    code = 0
    try:
        frontend = frontend_of(launcher, FRONTEND_WAIT)
        if frontend is None:
            raise NoServer("no TorchServe frontend is running under this command")
        report = drain_and_stop(frontend, args, say)
        say(report.line())
        code = 0 if report.clean else 1
    except UsageError as err:
        say(f"error: {err}")
        code = 2
    except (ServerError, ManagementError, ManagementUnreachable, OSError) as err:
        say(f"error: {err}; stopping TorchServe without a drain")
        code = 1
    finally:
        stop_group(launcher, STOP_TIMEOUT)  # whatever is left of TorchServe's group
    return code


if __name__ == "__main__":
    sys.exit(main())

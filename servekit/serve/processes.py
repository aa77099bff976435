"""Stop a server started in its own process group, with everything it started; make a
script stop its servers when it is terminated."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the group, wait up to ``timeout`` s, then SIGKILL what is left (children
    such as TorchServe workers may outlive their parent for a moment); safe to call twice."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def exit_on_sigterm() -> None:
    """Make SIGTERM (a CI timeout, ``kill``) unwind like Ctrl-C, through every ``with`` and
    ``finally``, so the servers a script started are stopped; exit code 128 + 15."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

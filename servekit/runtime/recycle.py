"""Let a TorchServe worker be recycled without failing a single inference request.

TorchServe 0.12 cannot drain one worker: a worker that exits while its frontend thread
holds an inference batch fails that batch ("Worker died."), and a worker that exits
between batches races the frontend handing it the next one. So the exit is tied to a
request that carries no user data: ``SIGUSR1`` only marks the worker *draining*; it
keeps serving inference as usual, and the first customized describe it is handed
(``GET /models/{name}?customized=true``, which TorchServe always batches alone) makes it
exit without answering. Only that describe fails; TorchServe starts a fresh process in
the worker's place. ``servekit recycle`` sends the signal and the describes.

``SIGUSR2`` retires a worker: the first customized describe it is handed is held (the
process renames itself ``RETIRED_NAME`` so the recycler sees it) until TorchServe scales the
worker down and kills it. Exiting instead would not do: TorchServe schedules a restart of a
worker that died, and a scale-down during that back-off does not cancel it, so the restarted
process would run on, serving requests, outside every worker list. The wait is bounded:
``PARK_SECONDS`` after the signal the worker is a normal worker again (it answers the describe
it holds, takes back its name, and a later describe is not held), so a recycler that stopped
half-way leaves no worker that holds describes for TorchServe's 300 s. Another ``SIGUSR2``
during the park extends it to ``PARK_SECONDS`` after that one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

logger = logging.getLogger(__name__)

_WORKER_SCRIPT = "model_service_worker"
_draining = threading.Event()
_retiring = threading.Event()
RETIRED_NAME = "sk-retired"  # the process name of a worker waiting to be scaled down
# How long after SIGUSR2 a retiring worker may hold a describe: `servekit recycle` scales it
# down within a second or two (its retries of a refused scale call take at most ~8 s); after
# that the worker goes back to being a normal worker.
PARK_SECONDS = 20.0
_retired_at: list[float] = []  # monotonic time of the last SIGUSR2
_PR_SET_NAME = 15  # prctl(2)


def in_torchserve_worker() -> bool:
    """True in a TorchServe Python worker's main thread (not in tests or the harness)."""
    return _WORKER_SCRIPT in os.path.basename(sys.argv[0] if sys.argv else "") and (
        threading.current_thread() is threading.main_thread()
    )


def install(model_name: str) -> bool:
    """Make ``SIGUSR1`` mark this worker draining and ``SIGUSR2`` retiring; only inside a
    TorchServe worker."""
    if not in_torchserve_worker():
        return False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR2:
            _retired_at[:] = [time.monotonic()]
            _retiring.set()
        _draining.set()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    return True


def draining() -> bool:
    return _draining.is_set()


def retiring() -> bool:
    """Marked by ``SIGUSR2``: this worker waits to be scaled down rather than recycled."""
    return _retiring.is_set()


def exit_for_recycling(model_name: str) -> None:
    """Leave now, inside a describe: no inference request is in this worker's hands. A
    retiring worker instead waits there to be scaled down, and returns (the describe is then
    answered as usual) if that did not happen within ``PARK_SECONDS`` of ``SIGUSR2``."""
    if _retiring.is_set():
        _park(model_name)
        return
    logger.info("%s worker %d draining: exiting for recycling", model_name, os.getpid())
    logging.shutdown()
    os._exit(0)


def _park_left() -> float:
    """Seconds until ``PARK_SECONDS`` after the last ``SIGUSR2``."""
    now = time.monotonic()
    return (_retired_at[0] if _retired_at else now) + PARK_SECONDS - now


def _park(model_name: str) -> None:
    """Hold this describe until TorchServe kills the worker or ``PARK_SECONDS`` after the
    last signal (one during the park extends it); then clear the signal's marks: a normal
    worker again."""
    if _park_left() > 0:
        name = process_name()
        logger.info("%s worker %d retiring: waiting to be scaled down", model_name, os.getpid())
        if set_process_name(RETIRED_NAME):
            while (left := _park_left()) > 0:
                time.sleep(min(left, 0.1))
            if name:
                set_process_name(name)
    logger.warning(
        "%s worker %d was not scaled down within %g s of SIGUSR2: serving again",
        model_name,
        os.getpid(),
        PARK_SECONDS,
    )
    _retiring.clear()
    _draining.clear()
    _retired_at.clear()


def process_name() -> str:
    """This process's name as ``ps`` shows it (Linux), or ``""``."""
    try:
        with open(f"/proc/{os.getpid()}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def set_process_name(name: str) -> bool:
    """Rename this process as ``ps`` and psutil show it (Linux); False where it cannot."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0)

"""Let a TorchServe worker be recycled without failing a single inference request.

TorchServe 0.12 cannot drain one worker: a worker that exits while its frontend thread
holds an inference batch fails that batch ("Worker died."), and a worker that exits
between batches races the frontend handing it the next one. So the exit is tied to a
request that carries no user data: ``SIGUSR1`` only marks the worker *draining*; it
keeps serving inference as usual, and the first customized describe it is handed
(``GET /models/{name}?customized=true``, which TorchServe always batches alone) makes it
exit without answering. Only that describe fails; TorchServe starts a fresh process in
the worker's place. ``servekit recycle`` sends the signal and the describes.

``SIGUSR2`` retires a worker for good: the first customized describe it is handed is held
(the process renames itself ``RETIRED_NAME`` so the recycler sees it) until TorchServe
scales the worker down and kills it. Exiting instead would not do: TorchServe schedules a
restart of a worker that died, and a scale-down during that back-off does not cancel it, so
the restarted process would run on, serving requests, outside every worker list.
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
PARK_SECONDS = 300.0  # then it exits anyway (and TorchServe restarts it): never stuck for good
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
            _retiring.set()
        _draining.set()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    return True


def draining() -> bool:
    return _draining.is_set()


def exit_for_recycling(model_name: str) -> None:
    """Leave now, inside a describe: no inference request is in this worker's hands. A
    retiring worker first waits there to be scaled down (see the module doc)."""
    if _retiring.is_set():
        logger.info("%s worker %d retiring: waiting to be scaled down", model_name, os.getpid())
        if set_process_name(RETIRED_NAME):
            time.sleep(PARK_SECONDS)
    logger.info("%s worker %d draining: exiting for recycling", model_name, os.getpid())
    logging.shutdown()
    os._exit(0)


def set_process_name(name: str) -> bool:
    """Rename this process as ``ps`` and psutil show it (Linux); False where it cannot."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0)

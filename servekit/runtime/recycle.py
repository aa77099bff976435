"""Let a TorchServe worker be recycled without failing a single inference request.

TorchServe 0.12 cannot drain one worker: a worker that exits while its frontend thread
holds an inference batch fails that batch ("Worker died."), and a worker that exits
between batches races the frontend handing it the next one. So the exit is tied to a
request that carries no user data: ``SIGUSR1`` only marks the worker *draining*; it
keeps serving inference as usual, and the first customized describe it is handed
(``GET /models/{name}?customized=true``, which TorchServe always batches alone) makes it
exit without answering. Only that describe fails; TorchServe starts a fresh process in
the worker's place. ``servekit recycle`` sends the signal and the describes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

logger = logging.getLogger(__name__)

_WORKER_SCRIPT = "model_service_worker"
_draining = threading.Event()


def in_torchserve_worker() -> bool:
    """True in a TorchServe Python worker's main thread (not in tests or the harness)."""
    return _WORKER_SCRIPT in os.path.basename(sys.argv[0] if sys.argv else "") and (
        threading.current_thread() is threading.main_thread()
    )


def install(model_name: str) -> bool:
    """Make ``SIGUSR1`` mark this worker draining; only inside a TorchServe worker."""
    if not in_torchserve_worker():
        return False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _draining.set()

    signal.signal(signal.SIGUSR1, on_signal)
    return True


def draining() -> bool:
    return _draining.is_set()


def exit_for_recycling(model_name: str) -> None:
    """Leave now, inside a describe: no inference request is in this worker's hands."""
    logger.info("%s worker %d draining: exiting for recycling", model_name, os.getpid())
    logging.shutdown()
    os._exit(0)

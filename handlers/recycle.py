"""Exit a TorchServe worker process when it is idle, on ``SIGUSR1``; TorchServe restarts it.

TorchServe 0.12 has no way to drain one worker: a worker that dies mid-batch fails that
batch with "Worker died.". So the worker exits only while it waits for its next command:
the signal handler looks at where the main thread was interrupted, and exits only if it
was blocked reading the first byte of a new message and no bytes are waiting on the
socket; otherwise it tries again a few milliseconds later. ``scripts/recycle_workers.py``
sends the signal, staggered so a model keeps its ``minWorkers`` READY.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.01
_WORKER_SCRIPT = "model_service_worker"


def in_torchserve_worker() -> bool:
    """True in a TorchServe Python worker's main thread (not in tests or the harness)."""
    return _WORKER_SCRIPT in os.path.basename(sys.argv[0] if sys.argv else "") and (
        threading.current_thread() is threading.main_thread()
    )


def install(model_name: str) -> bool:
    """Make ``SIGUSR1`` mean "exit when idle"; only inside a TorchServe worker."""
    if not in_torchserve_worker():
        return False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if _idle(frame):
            logger.info("%s worker %d idle: exiting for recycling", model_name, os.getpid())
            logging.shutdown()
            os._exit(0)
        threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signal.SIGUSR1)).start()

    signal.signal(signal.SIGUSR1, on_signal)
    return True


def _idle(frame: FrameType | None) -> bool:
    """Was the main thread blocked on the first byte of the next command, none pending?"""
    if frame is None or frame.f_code.co_name != "_retrieve_buffer":
        return False
    caller = frame.f_back
    local: dict[str, Any] = frame.f_locals
    if caller is None or caller.f_code.co_name != "retrieve_msg":
        return False
    if local.get("length") != 1 or local.get("data"):
        return False
    conn = local.get("conn")
    if not isinstance(conn, socket.socket):
        return False
    try:
        pending = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return not pending

"""``deferred_signals`` (servekit/health/recycle.py) holds SIGTERM/SIGINT through a clean-up or
a rollout's switch and drain, also while other threads run: the kernel hands a process signal
to any thread that does not block it, and Python runs the handler in the main thread, so a
blocked signal mask in the main thread alone let it through (found under load: a rollout
interrupted during its drain)."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

import pytest

from servekit.health.recycle import deferred_signals


class Stopped(Exception):
    pass


def test_a_signal_delivered_to_another_thread_waits_for_the_end_of_the_block() -> None:
    idle = threading.Event()
    other = threading.Thread(target=idle.wait, daemon=True)  # blocks no signal
    other.start()
    steps: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped, match="SIGTERM"), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):  # plenty of bytecode boundaries for a handler to run at
                time.sleep(0.001)
            steps.append("the block ran to its end")
        assert steps == ["the block ran to its end"]
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, before)
        idle.set()
        other.join()


def test_nothing_is_raised_without_a_signal() -> None:
    with deferred_signals():
        pass

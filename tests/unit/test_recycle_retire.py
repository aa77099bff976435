"""A worker sent ``SIGUSR2`` waits inside its next describe, renamed so ``servekit recycle``
sees it, until TorchServe scales it down (here: the test kills it); ``SIGUSR1`` exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from servekit.runtime.recycle import RETIRED_NAME

WORKER = """
import os, signal, sys
from servekit.runtime import recycle
assert recycle.install("m")
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
assert recycle.draining()
print("draining", flush=True)
recycle.exit_for_recycling("m")  # what a describe does in a draining worker
"""


def start(tmp_path: Path, signame: str) -> subprocess.Popen[str]:
    script = tmp_path / "model_service_worker.py"  # what in_torchserve_worker() looks for
    script.write_text(WORKER)
    process = subprocess.Popen(
        [sys.executable, str(script), signame], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "draining\n"
    return process


def test_sigusr2_holds_the_describe_renamed_until_killed(tmp_path: Path) -> None:
    process = start(tmp_path, "SIGUSR2")
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(process.pid).name() != RETIRED_NAME:
            assert process.poll() is None, "it exited instead of waiting"
            assert time.monotonic() < deadline, psutil.Process(process.pid).name()
            time.sleep(0.02)
    finally:
        process.kill()
    assert process.wait(10) == -signal.SIGKILL


def test_sigusr1_exits_inside_the_describe(tmp_path: Path) -> None:
    process = start(tmp_path, "SIGUSR1")
    assert process.wait(30) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="prctl(PR_SET_NAME) is Linux's")
def test_the_retired_name_fits_a_linux_process_name() -> None:
    assert len(RETIRED_NAME) < 15  # psutil reads a 15-character name from the command line


BOUNDED = """
import os, signal, sys, threading, time
from servekit.runtime import recycle
recycle.PARK_SECONDS = float(sys.argv[1])
assert recycle.install("m")
name = recycle.process_name()
os.kill(os.getpid(), signal.SIGUSR2)
if len(sys.argv) > 3:  # SIGUSR2 again, this long after the first
    threading.Timer(float(sys.argv[3]), os.kill, (os.getpid(), signal.SIGUSR2)).start()
time.sleep(float(sys.argv[2]))  # the describe comes this late
started = time.monotonic()
recycle.exit_for_recycling("m")  # returns: the describe is answered as usual
assert not recycle.draining()
assert recycle.process_name() == name, recycle.process_name()
print(round(time.monotonic() - started, 1), flush=True)
"""


@pytest.mark.parametrize(
    ("park", "late", "again", "held"),
    [
        ("1.5", "0", None, (1.0, 2.5)),  # never scaled down: held 1.5 s, then serves
        ("1.0", "1.5", None, (0.0, 0.4)),  # a describe after the bound is not held at all
        ("1.5", "0", "1.0", (2.2, 3.5)),  # signalled again 1 s in: held until 1.5 s after that
    ],
)
def test_a_retired_worker_not_scaled_down_serves_again_after_park_seconds(
    tmp_path: Path, park: str, late: str, again: str | None, held: tuple[float, float]
) -> None:
    script = tmp_path / "model_service_worker.py"
    script.write_text(BOUNDED)
    argv = [sys.executable, str(script), park, late, *([again] if again else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert held[0] <= float(done.stdout) <= held[1]


def test_park_seconds_is_far_below_torchserves_describe_wait() -> None:
    from servekit.runtime.recycle import PARK_SECONDS

    assert 10 <= PARK_SECONDS <= 30  # TorchServe waits 300 s for a customized describe

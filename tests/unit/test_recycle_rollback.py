"""``servekit recycle`` never leaves a model changed: a step stopped half-way (an error, a
refused scale call, ``SIGTERM``) removes the extra worker and sets minWorkers/maxWorkers back;
scale calls TorchServe refuses while busy are retried; one recycler per model. Against a fake
management API (TorchServe's scaling rule: start workers up to min, stop the newest down to max).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servekit import cli
from servekit.errors import ServerError
from servekit.health import recycle
from servekit.serve.management import ManagementError

BUSY = ManagementError("scaling m: HTTP 500 ConcurrentModificationException", 500)
IN_PROGRESS = ManagementError("scaling m: HTTP 206 Workers scaling in progress", 206)


class FakeTorchServe:
    def __init__(self, workers: int = 2, min_workers: int = 2, max_workers: int = 3) -> None:
        self.next_pid = 1000
        self.workers = [self._start() for _ in range(workers)]
        self.min, self.max = min_workers, max_workers
        self.parked: set[int] = set()
        self.scales: list[tuple[int, int]] = []
        self.refuse: dict[tuple[int, int], list[ManagementError]] = {}
        self.signals: list[tuple[int, int]] = []
        self.on_signal: dict[int, Any] = {}
        self.cut: list[int] = []  # workers stopped while serving (not parked)

    def _start(self) -> dict[str, Any]:
        self.next_pid += 1
        return {"pid": self.next_pid, "status": "READY", "memoryUsage": 0}

    # the Management calls the recycler makes
    def entry(self, model: str) -> dict[str, Any]:
        return copy.deepcopy(
            {"minWorkers": self.min, "maxWorkers": self.max, "workers": self.workers}
        )

    def scale(self, model: str, low: int, high: int, timeout: float) -> None:
        self.scales.append((low, high))
        refusals = self.refuse.get((low, high))
        if refusals:
            raise refusals.pop(0)
        self.min, self.max = low, high
        while len(self.workers) < low:
            self.workers.append(self._start())
        self.cut += [w["pid"] for w in self.workers[high:] if w["pid"] not in self.parked]
        del self.workers[high:]

    def wait_ready(self, model: str, **kwargs: Any) -> dict[str, Any]:
        entry = self.entry(model)
        if not kwargs["until"](entry):
            raise ManagementError(f"not reached: {entry}")
        return entry

    # the processes
    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        if signum in self.on_signal:
            self.on_signal.pop(signum)()
        if signum == signal.SIGUSR1:  # it exits in a describe; TorchServe restarts its slot
            slot = [w["pid"] for w in self.workers].index(pid)
            self.workers[slot] = self._start()
        elif signum == signal.SIGUSR2:
            self.parked.add(pid)

    def alive(self, pid: int) -> bool:
        return pid in {w["pid"] for w in self.workers}

    @property
    def state(self) -> tuple[int, int, int]:
        return len(self.workers), self.min, self.max


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeTorchServe]:
    server = FakeTorchServe()
    monkeypatch.setattr(recycle, "process_alive", server.alive)
    monkeypatch.setattr(recycle, "is_parked", lambda pid: pid in server.parked)

    def no_describes(self: recycle.Recycler, stop: threading.Event) -> None:
        stop.wait()

    monkeypatch.setattr(recycle.Recycler, "_describe_until", no_describes)
    yield server


def recycler(fake: FakeTorchServe, tmp_path: Path) -> recycle.Recycler:
    made = recycle.Recycler("http://127.0.0.1:9", "m", tmp_path, timeout=2)
    made.api = fake  # type: ignore[assignment]
    made.kill = fake.kill
    made.sleep = lambda seconds: None
    return made


def test_a_recycle_keeps_the_original_min_and_max(fake: FakeTorchServe, tmp_path: Path) -> None:
    done = recycler(fake, tmp_path).recycle(1001, "test")
    assert done.old_pid == 1001 and done.new_pid != 1001
    assert fake.state == (2, 2, 3)
    assert fake.scales[0] == (3, 3) and fake.scales[-1] == (2, 3)
    assert (1003, signal.SIGUSR2) in fake.signals  # the extra worker parked, then removed


def test_sigterm_right_after_the_scale_up_rolls_back(fake: FakeTorchServe, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    fake.on_signal[signal.SIGUSR1] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(recycle.Interrupted), recycle.interruptible():
        recycler(fake, tmp_path).recycle(1001, "test")
    assert fake.state == (2, 2, 3)  # not min 3 / max 3
    extra = 1003
    assert not fake.alive(extra) and (extra, signal.SIGUSR2) in fake.signals
    assert signal.getsignal(signal.SIGTERM) is before  # the handler it found is back


@pytest.mark.parametrize("refusal", [BUSY, IN_PROGRESS])
def test_a_busy_scale_down_is_retried(
    fake: FakeTorchServe, tmp_path: Path, refusal: ManagementError
) -> None:
    fake.refuse[(2, 2)] = [refusal, refusal]
    recycler(fake, tmp_path).recycle(1001, "test")
    assert fake.state == (2, 2, 3)
    assert fake.scales.count((2, 2)) == 3


def test_a_scale_down_refused_every_time_still_restores_the_model(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    fake.refuse[(2, 2)] = [BUSY] * recycle.SCALE_ATTEMPTS
    with pytest.raises(ServerError, match="ConcurrentModification"):
        recycler(fake, tmp_path).recycle(1001, "test")
    assert fake.state == (2, 2, 3)
    assert not fake.parked & {w["pid"] for w in fake.workers}  # no parked worker left listed


def test_other_errors_are_not_retried(fake: FakeTorchServe, tmp_path: Path) -> None:
    fake.refuse[(3, 3)] = [ManagementError("scaling m: HTTP 400 bad", 400)]
    with pytest.raises(ManagementError, match="400"):
        recycler(fake, tmp_path).recycle(1001, "test")
    assert fake.scales == [(3, 3), (2, 3)]  # nothing started: only min/max set back
    assert fake.state == (2, 2, 3)


def test_a_second_recycler_on_the_model_is_kept_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recycle", "--model", "m", "--max-requests", "5", "--stats-dir", str(tmp_path / "s")]
    argv += ["--management-url", "http://127.0.0.1:9", "--timeout", "1"]
    with recycle.model_lock(tmp_path / "s", "m"):
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "another servekit recycle" in err and f"pid {os.getpid()}" in err and "m" in err
    assert cli.main(argv) == 3  # the lock is released: it goes on (nothing listens there)


# --- the park's time left ----------------------------------------------------------------


def test_no_scale_down_of_a_worker_whose_park_is_about_to_end(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    made = recycler(fake, tmp_path)
    fake.parked.add(1002)
    made.park_ends[1002] = time.monotonic() + recycle.SCALE_MARGIN_SECONDS - 1
    with pytest.raises(ServerError, match="park ends in under 5 s; not scaled down"):
        made.scale(1, 1, parked=1002)
    assert fake.scales == [] and fake.state == (2, 2, 3)
    with pytest.raises(ServerError, match="park ends in under"):
        made.scale(1, 1, parked=1001)  # never signalled here: its park's end is unknown
    made.park_ends[1002] = time.monotonic() + 15
    made.scale(1, 1, parked=1002)
    assert fake.state == (1, 1, 1) and fake.cut == []


def test_a_worker_slow_to_park_is_signalled_again(
    fake: FakeTorchServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = recycler(fake, tmp_path)
    polls: list[int] = []

    def parks_on_the_fourth_look(pid: int) -> bool:
        polls.append(pid)
        return len(polls) >= 4

    monkeypatch.setattr(recycle, "is_parked", parks_on_the_fourth_look)
    made.sleep = lambda seconds: made.park_ends.update(
        {1002: made.park_ends[1002] - recycle.RESIGNAL_SECONDS}  # each poll: a resignal's wait
    )
    with made.parked(1002, 60):
        pass
    assert fake.signals == [(1002, signal.SIGUSR2)] * 3  # the first, then every 5 s unparked
    assert made.park_left(1002) > recycle.PARK_SECONDS - recycle.RESIGNAL_SECONDS - 1  # the last


def test_a_park_about_to_end_is_waited_out_and_the_worker_parked_again(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    """After an interrupted removal the worker may be parked with a second left: scaling it
    down then would stop it serving again. remove_parked waits until it serves, parks it
    again, and removes it in that new park."""
    made = recycler(fake, tmp_path)
    fake.scale("m", 3, 3, 1)  # 1003 joins
    fake.parked.add(1003)
    made.park_ends[1003] = time.monotonic() + 1
    made.sleep = lambda seconds: fake.parked.discard(1003)
    made.remove_parked(2, 1003, 5)
    assert fake.signals == [(1003, signal.SIGUSR2)]  # parked again only once it had served
    assert fake.state == (2, 2, 2) and fake.cut == []

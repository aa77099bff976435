"""``servekit scale``: options checked at the edge (exit 2 before any request), and its steps
against a fake management API with TorchServe's scaling rule (start workers up to min, stop
the newest down to max): one worker at a time, each parked first; a model it cannot drain is
left alone; a step stopped half-way leaves minWorkers/maxWorkers equal to the workers there
are."""

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
from servekit.ops import scale
from servekit.serve.management import ManagementError
from tests.unit.test_recycle_rollback import BUSY, FakeTorchServe

MODEL = ["--model", "m", "--management-url", "http://127.0.0.1:9", "--timeout", "1"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--workers", "0"], "a model keeps at least 1 worker; to take it off the server, "),
        (["--workers", "-2"], "unregister it (DELETE /models/<name>)"),
        (["--workers", "two"], "--workers: 'two' is not a whole number"),
        (["--workers", "1.5"], "'1.5' is not a whole number"),
        (["--workers", "3", "--max-workers", "2"], "--max-workers 2 is below --workers 3"),
        (["--workers", "1", "--max-workers", "0"], "--max-workers: '0'"),
        (["--workers", "3000000000"], "--workers: '3000000000': at most 1000 workers"),
        (["--workers", "1", "--max-workers", "1001"], "at most 1000 workers"),
        (["--workers", "1", "--timeout", "nan"], "--timeout: 'nan' must be a finite number > 0"),
        (["--workers", "1", "--model", "../x"], "not a model name TorchServe accepts"),
        (["--workers", "1", "--management-url", "localhost:1"], "did you mean 'http://"),
        (["--workers", "1", "--key-file", "/nonexistent/key_file.json"], "key_file.json"),
        ([], "the following arguments are required: --workers"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["scale", *MODEL, *argv]) == cli.USAGE
    captured = capsys.readouterr()
    assert needle in captured.err
    assert captured.out == "" and "Traceback" not in captured.err


def test_an_unreachable_server_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scale", *MODEL, "--workers", "1", "--stats-dir", str(tmp_path / "s")]
    assert cli.main(argv) == cli.UNREACHABLE
    assert "is TorchServe running?" in capsys.readouterr().err


def test_another_operation_on_the_model_keeps_it_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scale", *MODEL, "--workers", "1", "--stats-dir", str(tmp_path / "s")]
    with recycle.model_lock(tmp_path / "s", "m"):
        assert cli.main(argv) == cli.FAILED
    err = capsys.readouterr().err
    assert "another servekit recycle" in err and f"pid {os.getpid()}" in err


# --- the steps, against a fake TorchServe ----------------------------------------------------


class FakeServer(FakeTorchServe):
    def __init__(self, workers: int, served: tuple[str, ...] = ("m",)) -> None:
        super().__init__(workers, workers, workers)
        self.served = served

    def entry(self, model: str) -> dict[str, Any]:
        if model not in self.served:
            raise ManagementError(f"describing {model}: HTTP 404 Model not found", 404)
        return copy.deepcopy(super().entry(model))

    def models(self) -> list[str]:
        return list(self.served)


@pytest.fixture()
def patched(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeServer]]:
    """Processes as the fake server has them (set ``["server"]``)."""
    holder: dict[str, FakeServer] = {}
    alive = lambda pid: holder["server"].alive(pid)  # noqa: E731
    monkeypatch.setattr(recycle, "process_alive", alive)
    monkeypatch.setattr(scale, "process_alive", alive)
    parked = lambda pid: pid in holder["server"].parked  # noqa: E731
    monkeypatch.setattr(recycle, "is_parked", parked)

    def no_describes(self: recycle.Recycler, stop: threading.Event) -> None:
        stop.wait()

    monkeypatch.setattr(recycle.Recycler, "_describe_until", no_describes)
    yield holder


def scaler(
    holder: dict[str, FakeServer], workers: int, model: str = "m"
) -> tuple[FakeServer, scale.Scaler, list[scale.Change]]:
    server = holder["server"] = FakeServer(workers)
    made = recycle.Recycler("http://127.0.0.1:9", model, Path("unused"), timeout=2)
    made.api = server  # type: ignore[assignment]
    made.kill = server.kill
    made.sleep = lambda seconds: None
    changes: list[scale.Change] = []
    done = scale.Scaler(made, changes.append)
    done.drainable = lambda pid: None
    done.handler_status = lambda: (None, None)  # a handler reporting no status: READY is all
    return server, done, changes


def test_scaling_down_removes_the_newest_one_at_a_time_each_parked_first(
    patched: dict[str, FakeServer],
) -> None:
    server, scaler_, changes = scaler(patched, 3)
    summary = scaler_.run(1, 2)
    assert [(c.event, c.pid, c.workers) for c in changes] == [
        ("removed", 1003, 2),
        ("removed", 1002, 1),
    ]
    assert server.signals == [(1003, signal.SIGUSR2), (1002, signal.SIGUSR2)]
    assert server.scales == [(2, 2), (1, 1), (1, 2)]  # one worker per scale call
    assert server.state == (1, 1, 2) and server.cut == []
    assert (summary.before, summary.after, summary.min_workers, summary.max_workers) == (
        3,
        1,
        1,
        2,
    )


def test_scaling_up_reports_the_new_workers(patched: dict[str, FakeServer]) -> None:
    server, scaler_, changes = scaler(patched, 1)
    scaler_.run(3, 4)
    assert [(c.event, c.pid) for c in changes] == [("added", 1002), ("added", 1003)]
    assert server.state == (3, 3, 4) and not server.signals


def test_the_same_count_only_sets_min_and_max(patched: dict[str, FakeServer]) -> None:
    server, scaler_, changes = scaler(patched, 2)
    scaler_.run(2, 5)
    assert changes == [] and server.scales == [(2, 5)] and not server.signals


def test_an_unknown_model_names_the_models_served(patched: dict[str, FakeServer]) -> None:
    server, scaler_, _ = scaler(patched, 2, model="nope")
    with pytest.raises(ServerError, match=r"model 'nope' is not registered; models served: m$"):
        scaler_.run(1, 1)
    assert server.scales == []


def test_a_worker_out_of_reach_changes_nothing(patched: dict[str, FakeServer]) -> None:
    server, scaler_, _ = scaler(patched, 3)
    scaler_.drainable = lambda pid: None if pid == 1001 else "is not a process visible from here"
    with pytest.raises(ServerError, match="worker 1002 is not a process visible from here") as err:
        scaler_.run(1, 1)
    assert "nothing was changed" in str(err.value)
    assert server.scales == [] and server.signals == [] and server.state == (3, 3, 3)


def test_a_worker_not_started_yet_is_not_checked(patched: dict[str, FakeServer]) -> None:
    """The newest worker has no process yet (pid -1, not READY): there is nothing to drain
    (checking it would refuse the whole scale-down); the others are checked."""
    server, scaler_, _ = scaler(patched, 4)
    server.workers[-1] = {**server.workers[-1], "pid": -1, "status": "UNLOADING"}
    checked: list[int] = []

    def obstacle(pid: int) -> str | None:
        checked.append(pid)
        return "is out of reach" if pid == 1003 else None

    scaler_.drainable = obstacle
    with pytest.raises(ServerError, match="worker 1003 is out of reach; nothing was changed"):
        scaler_.run(1, 1)
    assert checked == [1002, 1003] and server.scales == []


def test_scaling_up_waits_until_the_new_workers_are_warmed_up(
    patched: dict[str, FakeServer],
) -> None:
    """A worker warming up in the background is READY at once: the scale-up ends only when
    a customized describe answered by each new worker says ready."""
    _, scaler_, changes = scaler(patched, 1)
    answers = iter(
        [("warming", 1002), ("ready", 1001), ("ready", 1002), ("warming", 1003), ("ready", 1003)]
    )
    asked: list[int] = []

    def status() -> tuple[str | None, int | None]:
        found = next(answers)
        asked.append(found[1])
        return found

    scaler_.handler_status = status
    scaler_.run(3, 3)
    assert asked == [1002, 1001, 1002, 1003, 1003]
    assert [c.pid for c in changes] == [1002, 1003]


def test_a_worker_that_never_warms_up_fails_the_scale_up(
    patched: dict[str, FakeServer],
) -> None:
    _, scaler_, _ = scaler(patched, 1)
    scaler_.recycler.timeout = 0.2
    scaler_.recycler.sleep = lambda seconds: time.sleep(0.01)
    scaler_.handler_status = lambda: ("degraded", 1002)
    with pytest.raises(ServerError, match=r"worker\(s\) 1002 READY but not warmed up within"):
        scaler_.run(2, 2)


def test_min_and_max_not_as_asked_is_an_error(patched: dict[str, FakeServer]) -> None:
    server, scaler_, _ = scaler(patched, 2)
    real = server.scale
    server.scale = lambda model, low, high, timeout: real(model, low, min(high, 4), timeout)  # type: ignore[method-assign]
    with pytest.raises(ServerError, match="asked for minWorkers 2, maxWorkers 5; TorchServe has"):
        scaler_.run(2, 5)


def test_sigterm_before_the_worker_parked_finishes_that_removal_only(
    patched: dict[str, FakeServer],
) -> None:
    server, scaler_, changes = scaler(patched, 3)
    server.on_signal[signal.SIGUSR2] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(recycle.Interrupted), recycle.interruptible():
        scaler_.run(1, 1)
    assert server.state == (2, 2, 2)  # 1003 parked (signalled again) and removed; no more
    assert not server.alive(1003) and changes == [] and server.cut == []


def test_sigterm_while_the_worker_is_parked_finishes_that_removal_in_the_park(
    patched: dict[str, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure of test_scale_down.py's SIGTERM test: stopped after the worker parked,
    the clean-up left the park first (it waited it out), parked the worker again and left
    that park too, then scaled down: TorchServe stopped a worker serving again, a 500."""
    server, scaler_, changes = scaler(patched, 3)
    real = server.scale

    def interrupted_once(model: str, low: int, high: int, timeout: float) -> None:
        server.scale = real  # type: ignore[method-assign]
        assert server.parked == {1003}
        os.kill(os.getpid(), signal.SIGTERM)

    server.scale = interrupted_once  # type: ignore[method-assign]
    with pytest.raises(recycle.Interrupted), recycle.interruptible():
        scaler_.run(1, 1)
    assert server.state == (2, 2, 2) and changes == []
    assert server.cut == []  # removed while parked, not after its park ended
    assert server.signals == [(1003, signal.SIGUSR2)]  # the first park was enough


def test_a_worker_that_does_not_park_after_sigterm_is_left_serving(
    patched: dict[str, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, scaler_, _ = scaler(patched, 3)
    monkeypatch.setattr(scale, "ROLLBACK_PARK_SECONDS", 0.05)
    server.on_signal[signal.SIGUSR2] = lambda: os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(recycle, "is_parked", lambda pid: False)  # it never takes a describe
    with pytest.raises(recycle.Interrupted), recycle.interruptible():
        scaler_.run(1, 1)
    assert server.state == (3, 3, 3) and server.cut == []  # not stopped while serving


def test_a_scale_down_refused_every_time_leaves_a_consistent_model(
    patched: dict[str, FakeServer],
) -> None:
    server, scaler_, _ = scaler(patched, 3)
    server.refuse[(2, 2)] = [BUSY] * (2 * recycle.SCALE_ATTEMPTS)
    with pytest.raises(ServerError, match="ConcurrentModification"):
        scaler_.run(1, 1)
    count, low, high = server.state
    assert count == 3 and low == high == count  # the worker serves on, min/max agree


def test_drain_obstacles_of_real_processes(tmp_path: Path) -> None:
    missing = scale.drain_obstacle(2**22 + 12345) or ""
    assert missing.startswith("is not a process visible from here; the drain signals")
    assert "run it beside the server" in missing
    assert "is not a TorchServe worker here" in (scale.drain_obstacle(os.getpid()) or "")


def test_catches_reads_the_signal_mask() -> None:
    # the handler found is put back by tests/conftest.py
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    assert scale.catches(os.getpid(), signal.SIGUSR2) is False
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    assert scale.catches(os.getpid(), signal.SIGUSR2) is True
    assert scale.catches(2**22 + 12345, signal.SIGUSR2) is None

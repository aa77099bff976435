"""The worker's side of a drain (servekit/runtime/draining.py): the marker, the shared ticket
counter, and a real handler refusing what arrives once its server refuses new requests."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servekit.ops.drain import DrainReport, build_parser
from servekit.ops.drain import main as drain_main
from servekit.ops.frontend import NoServer, from_pid
from servekit.runtime.draining import (
    ANNOUNCE,
    REFUSE,
    Marker,
    WorkerDrain,
    ack_path,
    marker_path,
    read_ack,
    read_marker,
    read_spent,
    spent_path,
    take_tickets,
    write_atomically,
)
from servekit.serve.harness import LocalModel, Request

IRIS = {"features": [5.1, 3.5, 1.4, 0.2]}


def current(phase: str, retry: int, allowance: dict[str, int]) -> str:
    """A marker of this process (the drainer) for the frontend of every WorkerDrain here: this
    process's parent, as a TorchServe worker's frontend is its parent."""
    return Marker.of_drainer(phase, os.getppid(), retry, allowance).to_json()


def private(tmp_path: Path) -> Path:
    directory = tmp_path / "drain"
    directory.mkdir(mode=0o700)
    return directory


def test_a_marker_round_trips_and_garbage_is_no_marker() -> None:
    marker = Marker(REFUSE, 3, {"iris": 5})
    assert Marker.parse(marker.to_json()) == marker
    assert Marker.parse("") is None
    assert Marker.parse('{"phase": "stop"}') is None
    assert Marker.parse("[1]") is None
    odd = Marker.parse('{"phase": "refuse", "retry_after": true, "allowance": {"a": -1, "b": 2}}')
    assert odd == Marker(REFUSE, 1, {"b": 2})


def test_a_marker_in_a_foreign_or_open_directory_is_ignored(tmp_path: Path) -> None:
    directory = private(tmp_path)
    path = marker_path(directory, 77)
    marker = Marker.of_drainer(ANNOUNCE, os.getppid())
    write_atomically(path, marker.to_json())
    assert read_marker(path) == marker
    directory.chmod(0o777)  # anyone could have planted it
    try:
        assert read_marker(path) is None
    finally:
        directory.chmod(0o700)


def test_tickets_grant_at_most_the_allowance(tmp_path: Path) -> None:
    path = tmp_path / "m.spent"
    assert take_tickets(path, 4, 6) == 4
    assert take_tickets(path, 4, 6) == 2
    assert take_tickets(path, 4, 6) == 0
    assert read_spent(path) == 6
    assert take_tickets(path, 3, None) == 3  # no allowance: everything, still counted
    assert read_spent(path) == 9


def _take(args: tuple[str, int]) -> int:
    path, rounds = args
    return sum(take_tickets(Path(path), 1, 50) for _ in range(rounds))


def test_tickets_are_shared_exactly_between_processes(tmp_path: Path) -> None:
    """Four workers racing for 50 tickets get 50 between them, never more."""
    path = tmp_path / "m.spent"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        granted = pool.map(_take, [(str(path), 30)] * 4)
    assert sum(granted) == 50 and read_spent(path) == 50


def test_a_worker_serves_all_until_refusing_then_its_allowance(tmp_path: Path) -> None:
    directory = private(tmp_path)
    drain = WorkerDrain("iris", directory)
    assert drain.admit(3) == (3, 1)  # no marker
    write_atomically(drain.marker_path, Marker.of_drainer(ANNOUNCE, os.getppid()).to_json())
    assert drain.admit(3) == (3, 1)  # announcing: still serving
    write_atomically(drain.marker_path, current(REFUSE, 7, {"iris": 4}))
    assert drain.admit(3) == (3, 7)
    assert drain.admit(3) == (1, 7)
    assert drain.admit(2) == (0, 7)
    assert read_spent(spent_path(directory, os.getppid(), "iris")) == 4
    write_atomically(drain.marker_path, current(REFUSE, 7, {"other": 0}))
    assert drain.admit(2) == (2, 7)  # a model the drainer did not name is not refused


def test_the_acknowledgement_counts_from_the_marker_and_says_busy(tmp_path: Path) -> None:
    directory = private(tmp_path)
    drain = WorkerDrain("iris", directory)
    drain.admit(5)
    assert not drain.acknowledge()  # no drain: nothing written
    assert not ack_path(directory, drain.frontend_pid, drain.worker_pid).exists()
    write_atomically(drain.marker_path, current(REFUSE, 1, {"iris": 1}))
    drain.start_batch()
    assert drain.acknowledge()
    ack = read_ack(ack_path(directory, drain.frontend_pid, drain.worker_pid))
    assert ack is not None and ack["busy"] and ack["served"] == 0 and ack["refused"] == 0
    drain.admit(3)
    drain.end_batch()
    drain.acknowledge()
    ack = read_ack(ack_path(directory, drain.frontend_pid, drain.worker_pid))
    assert ack is not None and not ack["busy"] and (ack["served"], ack["refused"]) == (1, 2)


@pytest.fixture
def iris(model_store: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    with LocalModel.from_mar(model_store / "iris.mar", batch_size=4) as model:
        handler = model.service._entry_point.__self__
        handler.drain = WorkerDrain("iris", private(tmp_path))
        yield model, handler


def test_a_refusing_handler_answers_503_with_retry_after_and_stays_ready(iris) -> None:  # type: ignore[no-untyped-def]
    model, handler = iris
    assert model.describe()["status"] == "ready"
    write_atomically(handler.drain.marker_path, Marker.of_drainer(ANNOUNCE, os.getppid()).to_json())
    assert model.describe()["status"] == "draining"  # the readiness probe fails on this
    assert [r.status for r in model.predict([Request.json(IRIS)] * 2)] == [200, 200]
    write_atomically(handler.drain.marker_path, current(REFUSE, 2, {"iris": 1}))
    replies = model.predict([Request.json(IRIS), Request.json(IRIS), Request.json({"x": 1})])
    assert [r.status for r in replies] == [200, 503, 503]
    assert replies[0].json()["label"] == "setosa"
    for reply in replies[1:]:
        assert reply.headers.get("Retry-After") == "2"
        assert "shutting down" in reply.json()["message"]
        assert "request_id" in reply.json()
    assert handler.health.failures_in_a_row == 0  # a refusal is not the model failing
    handler.drain.marker_path.unlink()
    assert model.describe()["status"] == "ready"
    assert [r.status for r in model.predict([Request.json(IRIS)])] == [200]


def test_stop_usage_errors() -> None:
    parser = build_parser()
    for bad in (["--announce", "-1"], ["--timeout", "nan"], ["--retry-after", "1.5"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(bad)
        assert stop.value.code == 2


def test_a_pid_that_is_not_torchserve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NoServer, match="not a TorchServe frontend"):
        from_pid(os.getpid())
    pid_file = tmp_path / "pid"
    pid_file.write_text("not a pid")
    with pytest.raises(NoServer, match="no TorchServe pid file"):
        from_pid(path=pid_file)
    with pytest.raises(NoServer, match="not running"):
        from_pid(2**22 + 12345)


def test_the_report_says_what_was_cut() -> None:
    clean = DrainReport(1.0, 0.5, 2.0, answered=10, refused=3)
    assert "every accepted request answered" in clean.line() and "3 refused" in clean.line()
    cut = DrainReport(1.0, 60.0, 2.0, answered=10, left=4, clean=False)
    assert "4 request(s)" in cut.line()
    assert json.loads(json.dumps(clean.__dict__))["answered"] == 10


def test_a_marker_counts_only_while_its_drainer_runs_for_this_frontend(tmp_path: Path) -> None:
    """A drainer killed half-way (a preStop hook past its grace period) or a marker left by an
    earlier server with the same pid (a restarted container) must not refuse or fail
    readiness."""
    directory = private(tmp_path)
    drain = WorkerDrain("iris", directory)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = Marker.of_drainer(REFUSE, os.getppid(), 1, {"iris": 0})
    for stale in (
        dataclasses.replace(live, drainer=gone.pid),  # the drainer died
        dataclasses.replace(live, drainer_started=live.drainer_started - 60),  # pid reused
        dataclasses.replace(live, frontend_started=live.frontend_started - 60),  # old server
        dataclasses.replace(live, drainer=0),  # written by hand, or by an older servekit
    ):
        write_atomically(drain.marker_path, stale.to_json())
        assert drain.marker() is None
        assert drain.admit(2) == (2, 1)
        assert not drain.acknowledge()
    write_atomically(drain.marker_path, live.to_json())
    assert drain.marker() == live and drain.admit(2) == (0, 1)


@pytest.mark.parametrize(
    "args",
    [["--pid", "-1"], ["--pid", "0"], ["--announce", "10", "--timeout", "10"]],
)
def test_stop_refuses_bad_pids_and_an_announce_past_the_timeout(args: list[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        drain_main(args)
    assert stop.value.code == 2

"""servekit.observe: restarts and recycles, the workers' published files, the metric families
of the contract, the CLI, and the exporter against a TorchServe that answers garbage.

No TorchServe here: a snapshot is made of real ``ModelHealth`` values (``evaluate_describe`` on
describes shaped like TorchServe 0.12's), or polled from a small local HTTP server that plays
TorchServe's APIs (``FakeTorchServe``) and answers what a test sets. The metrics are rendered
with prometheus_client and parsed back with its parser, as Prometheus would read them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servekit.cli import main as servekit_main
from servekit.health.probe import Target
from servekit.health.verdict import evaluate_describe
from servekit.observe.collector import STATUSES, ExporterCollector, Watcher
from servekit.observe.restarts import ExitCounter
from servekit.observe.snapshot import ModelView, Snapshot, handler_statuses
from servekit.runtime.stats import Published, read_published, stats_dir
from servekit.serve.server import free_ports

MODEL_GAUGES = (
    "servekit_model_workers",
    "servekit_model_workers_ready",
    "servekit_model_min_workers",
    "servekit_model_max_workers",
    "servekit_model_pending_requests",
    "servekit_model_queue_remaining",
    "servekit_model_healthy",
    "servekit_model_loadable",
)
COUNTERS = ("servekit_worker_restarts", "servekit_worker_recycles")


# --- describes shaped like TorchServe 0.12's -------------------------------------------------


def worker(wid: int, pid: int, status: str = "READY") -> dict[str, Any]:
    return {
        "id": str(wid),
        "startTime": "2026-01-01T00:00:00.000Z",
        "status": status,
        "memoryUsage": 123456,
        "pid": pid,
        "gpu": False,
        "gpuUsage": "N/A",
    }


def describe(
    name: str,
    workers: list[dict[str, Any]],
    min_workers: int = 1,
    max_workers: int = 4,
    queue: tuple[int, int] | None = (0, 100),
    **extra: Any,
) -> list[dict[str, Any]]:
    """``GET /models/{name}``: a list of one entry; ``queue`` is (pending, remaining)."""
    entry: dict[str, Any] = {
        "modelName": name,
        "modelVersion": "1.0",
        "modelUrl": f"{name}.mar",
        "runtime": "python",
        "minWorkers": min_workers,
        "maxWorkers": max_workers,
        "batchSize": 1,
        "maxBatchDelay": 100,
        "maxRetryTimeoutInSec": 300,
        "loadedAtStartup": True,
        "workers": workers,
        **extra,
    }
    if queue is not None:
        entry["jobQueueStatus"] = {"pendingRequests": queue[0], "remainingCapacity": queue[1]}
    return [entry]


def view(document: object, name: str = "iris", **statuses: int) -> ModelView:
    return ModelView(evaluate_describe(name, document), statuses)


# --- scraping ----------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(watcher: Watcher) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Family name (``_total`` kept for counters) -> labels -> value, as Prometheus parses
    the text; also checks each family's type."""
    registry = CollectorRegistry()
    registry.register(ExporterCollector(watcher))
    text = generate_latest(registry).decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        expected = "counter" if family.name in COUNTERS else "gauge"
        assert family.type == expected, family.name
        for sample in family.samples:
            suffix = "_total" if expected == "counter" else ""
            assert sample.name == family.name + suffix
            series = found.setdefault(sample.name, {})
            series[tuple(sorted(sample.labels.items()))] = sample.value
        found.setdefault(family.name + ("_total" if expected == "counter" else ""), {})
    return found


def by_model(series: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)["model_name"]: value for labels, value in series.items()}


def watcher_with(snapshot: Snapshot | None, clock: Clock, polled_at: float = 0.0) -> Watcher:
    watcher = Watcher(Target(), clock=clock)
    watcher.snapshot, watcher.polled_at = snapshot, polled_at
    return watcher


# --- ExitCounter --------------------------------------------------------------------------------


def reasons(table: dict[int, str | None]) -> Callable[[str, int], str | None]:
    return lambda model, pid: table.get(pid)


def counted(counter: ExitCounter, model: str = "iris") -> tuple[int, int]:
    return counter.restarts[model], counter.recycles[model]


def test_a_model_seen_is_exported_at_zero() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    assert counted(counter) == (0, 0)
    assert "iris" in counter.restarts and "iris" in counter.recycles


def test_a_new_pid_under_a_known_worker_id_is_a_restart() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101, "9001": 102}, reasons({}))
    counter.update("iris", {"9000": 201, "9001": 102}, reasons({}))
    assert counted(counter) == (1, 0)


@pytest.mark.parametrize(
    ("leaving", "expected"), [("recycle", (0, 1)), ("retire", (0, 0)), (None, (1, 0))]
)
def test_the_old_processs_leaving_decides(leaving: str | None, expected: tuple[int, int]) -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("iris", {"9000": 201}, reasons({101: leaving}))
    assert counted(counter) == expected


def test_leaving_is_asked_about_the_old_pid() -> None:
    asked: list[tuple[str, int]] = []

    def leaving(model: str, pid: int) -> str | None:
        asked.append((model, pid))
        return None

    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, leaving)
    counter.update("iris", {"9000": 201}, leaving)
    assert asked == [("iris", 101)]


def test_a_worker_id_disappearing_is_a_scale_down_not_a_restart() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101, "9001": 102}, reasons({}))
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("iris", {"9000": 101, "9002": 301}, reasons({}))  # scaled up again: new id
    assert counted(counter) == (0, 0)


def test_pid_zero_is_ignored_and_keeps_the_known_pid() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("iris", {"9000": 0}, reasons({}))  # TorchServe has none to report yet
    assert counted(counter) == (0, 0)
    counter.update("iris", {"9000": 201}, reasons({}))
    assert counted(counter) == (1, 0)
    counter.update("iris", {"9000": 201}, reasons({}))
    assert counted(counter) == (1, 0)


def test_two_restarts_of_one_worker_across_polls_count_two() -> None:
    counter = ExitCounter()
    for pid in (101, 201, 301):
        counter.update("iris", {"9000": pid}, reasons({}))
    assert counted(counter) == (2, 0)


def test_models_are_counted_apart() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("digits", {"9001": 102}, reasons({}))
    counter.update("iris", {"9000": 201}, reasons({}))
    counter.update("digits", {"9001": 202}, reasons({102: "recycle"}))
    assert counted(counter, "iris") == (1, 0)
    assert counted(counter, "digits") == (0, 1)


def test_an_empty_worker_list_keeps_the_known_pids() -> None:
    """A describe that failed has no workers: a restart meanwhile is still counted."""
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("iris", {}, reasons({}))
    counter.update("iris", {"9000": 201}, reasons({}))
    assert counted(counter) == (1, 0)


def test_unregistering_a_model_keeps_its_counts_and_forgets_its_pids() -> None:
    counter = ExitCounter()
    counter.update("iris", {"9000": 101}, reasons({}))
    counter.update("iris", {"9000": 201}, reasons({}))
    counter.forget({"iris"})
    assert counter.watched() == set()
    assert counted(counter) == (1, 0)  # a counter stays monotonic
    counter.update("iris", {"9000": 301}, reasons({}))  # registered again (even the same id)
    assert counted(counter) == (1, 0)


# --- read_published ----------------------------------------------------------------------------


def publish(directory: Path, pid: int, content: str | bytes) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{pid}.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


GOOD = {"pid": 4242, "requests": 7, "errors": 0, "status": "ready", "leaving": None, "time": 1.0}


def test_read_published_good_file(tmp_path: Path) -> None:
    publish(tmp_path, 4242, json.dumps(GOOD))
    assert read_published(tmp_path, 4242) == Published(7, "ready", None)
    publish(tmp_path, 4243, json.dumps({**GOOD, "status": "degraded", "leaving": "recycle"}))
    assert read_published(tmp_path, 4243) == Published(7, "degraded", "recycle")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="json-list"),
        pytest.param(b'"ready"', id="json-string"),
        pytest.param(b"null", id="json-null"),
        pytest.param(json.dumps(GOOD)[:20].encode(), id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"NaN", id="nan"),
    ],
)
def test_read_published_unreadable_is_none(tmp_path: Path, content: bytes) -> None:
    publish(tmp_path, 1, content)
    assert read_published(tmp_path, 1) is None


def test_read_published_missing_file_is_none(tmp_path: Path) -> None:
    assert read_published(tmp_path, 1) is None
    assert read_published(tmp_path / "nowhere", 1) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": 5}, Published(7, "unknown", None)),
        ({"status": "READY"}, Published(7, "unknown", None)),
        ({"status": ["ready"]}, Published(7, "unknown", None)),
        ({"requests": True}, Published(None, "ready", None)),
        ({"requests": 1.5}, Published(None, "ready", None)),
        ({"requests": "7"}, Published(None, "ready", None)),
        ({"leaving": "x"}, Published(7, "ready", None)),
        ({"leaving": True}, Published(7, "ready", None)),
        ({"leaving": ["recycle"]}, Published(7, "ready", None)),
    ],
)
def test_read_published_wrong_types_read_as_absent(
    tmp_path: Path, fields: dict[str, object], expected: Published
) -> None:
    publish(tmp_path, 1, json.dumps({**GOOD, **fields}))
    assert read_published(tmp_path, 1) == expected


def test_read_published_a_directory_in_its_place_is_none(tmp_path: Path) -> None:
    (tmp_path / "1.json").mkdir()
    assert read_published(tmp_path, 1) is None


def test_read_published_a_dangling_symlink_is_none(tmp_path: Path) -> None:
    (tmp_path / "1.json").symlink_to(tmp_path / "nowhere.json")
    assert read_published(tmp_path, 1) is None


def test_read_published_a_large_file_is_bounded(tmp_path: Path) -> None:
    """Decided: the exporter reads only from a directory that only its own user can write
    (``trusted``), so a huge file is that user's own doing; the reader may read it whole or
    stop at a cap (a worker writes ~150 bytes), but quickly and without raising."""
    publish(tmp_path, 1, " " * (8 << 20) + json.dumps(GOOD))
    started = time.perf_counter()
    assert read_published(tmp_path, 1) in (None, Published(7, "ready", None))
    assert time.perf_counter() - started < 5


def test_read_published_deeply_nested_json_is_none(tmp_path: Path) -> None:
    publish(tmp_path, 1, b"[" * 100_000)
    assert read_published(tmp_path, 1) is None


def test_read_published_a_fifo_in_its_place_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "1.json"
    os.mkfifo(fifo)
    got: list[Published | None] = []
    reader = threading.Thread(target=lambda: got.append(read_published(tmp_path, 1)), daemon=True)
    reader.start()
    reader.join(2)
    blocked = reader.is_alive()
    if blocked:  # let the reader go: a writer that leaves at once gives it an empty read
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert not blocked and got == [None]


# --- where the exporter reads: only a private directory -----------------------------------------


def described(*pids: int) -> ModelView:
    workers = [worker(9000 + i, pid) for i, pid in enumerate(pids)]
    return view(describe("iris", workers))


def test_handler_statuses_add_up_to_the_workers(tmp_path: Path) -> None:
    directory = stats_dir("iris", tmp_path)
    directory.parent.mkdir(mode=0o700)
    publish(directory, 101, json.dumps(GOOD))
    publish(directory, 102, json.dumps({**GOOD, "status": "warming"}))
    publish(directory, 103, b"{cut")
    model = described(101, 102, 103, 104, 0).health
    assert handler_statuses(model, tmp_path) == {"ready": 1, "warming": 1, "unknown": 3}


def test_a_stats_dir_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    """Workers refuse to publish through a link (``private_dir``); the exporter refuses to
    read through one: someone else's directory could say anything."""
    elsewhere = tmp_path / "elsewhere"
    publish(elsewhere, 101, json.dumps(GOOD))
    directory = stats_dir("iris", tmp_path)
    directory.parent.mkdir(mode=0o700)
    directory.symlink_to(elsewhere)
    assert handler_statuses(described(101).health, tmp_path) == {"unknown": 1}


def test_a_parent_that_others_can_write_is_not_read(tmp_path: Path) -> None:
    directory = stats_dir("iris", tmp_path)
    publish(directory, 101, json.dumps(GOOD))
    model = described(101).health
    directory.parent.chmod(0o700)
    assert handler_statuses(model, tmp_path) == {"ready": 1}
    directory.parent.chmod(0o777)
    try:
        assert handler_statuses(model, tmp_path) == {"unknown": 1}
    finally:
        directory.parent.chmod(0o700)


# --- the collector: every family and label of the contract ---------------------------------------


def test_before_the_first_poll_only_the_poll_age_nan() -> None:
    families = scrape(watcher_with(None, Clock()))
    assert list(families) == ["servekit_exporter_poll_age_seconds"]
    assert math.isnan(families["servekit_exporter_poll_age_seconds"][()])


def test_every_family_of_the_contract() -> None:
    iris = view(
        describe(
            "iris",
            [worker(9000, 101), worker(9001, 102), worker(9002, 0, "WORKER_STARTED")],
            min_workers=2,
            max_workers=3,
            queue=(4, 96),
        ),
        ready=1,
        warming=1,
        unknown=1,
    )
    digits = view(describe("digits", [worker(9003, 103)]), "digits", ready=1)
    clock = Clock(1000.0)
    watcher = watcher_with(Snapshot(True, True, (iris, digits), seconds=0.125), clock, 997.5)
    watcher.exits.update("iris", {"9000": 101, "9001": 99}, reasons({}))
    watcher.exits.update("iris", {"9000": 101, "9001": 102}, reasons({}))  # one restart
    watcher.exits.update("digits", {"9003": 98}, reasons({}))
    watcher.exits.update("digits", {"9003": 103}, reasons({98: "recycle"}))
    families = scrape(watcher)

    assert families["servekit_exporter_poll_age_seconds"] == {(): 2.5}
    assert families["servekit_exporter_poll_seconds"] == {(): 0.125}
    assert families["servekit_torchserve_up"] == {(): 1.0}
    expected = {
        "servekit_model_workers": {"iris": 3, "digits": 1},
        "servekit_model_workers_ready": {"iris": 2, "digits": 1},
        "servekit_model_min_workers": {"iris": 2, "digits": 1},
        "servekit_model_max_workers": {"iris": 3, "digits": 4},
        "servekit_model_pending_requests": {"iris": 4, "digits": 0},
        "servekit_model_queue_remaining": {"iris": 96, "digits": 100},
        "servekit_model_healthy": {"iris": 1, "digits": 1},
        "servekit_model_loadable": {"iris": 1, "digits": 1},
        "servekit_worker_restarts_total": {"iris": 1, "digits": 0},
        "servekit_worker_recycles_total": {"iris": 0, "digits": 1},
    }
    for name, values in expected.items():
        assert by_model(families[name]) == values, name
        assert all(len(labels) == 1 for labels in families[name]), name
    handler = {
        (dict(labels)["model_name"], dict(labels)["status"]): value
        for labels, value in families["servekit_handler_workers"].items()
    }
    assert set(STATUSES) == {"ready", "warming", "degraded", "initializing", "draining", "unknown"}
    assert handler == {
        **{(m, s): 0.0 for m in ("iris", "digits") for s in STATUSES},
        ("iris", "ready"): 1,
        ("iris", "warming"): 1,
        ("iris", "unknown"): 1,
        ("digits", "ready"): 1,
    }
    assert set(families) == {
        "servekit_exporter_poll_age_seconds",
        "servekit_exporter_poll_seconds",
        "servekit_exporter_poll_ok",
        "servekit_torchserve_up",
        "servekit_torchserve_ping_healthy",
        "servekit_handler_workers",
        *(f"{g}" for g in MODEL_GAUGES),
        *(f"{c}_total" for c in COUNTERS),
    }


def test_an_unhealthy_model_that_cannot_load() -> None:
    health = evaluate_describe("iris", describe("iris", [worker(9000, 0, "WORKER_STOPPED")]))
    broken = ModelView(
        type(health)(**{**health.__dict__, "init_error": "ModuleNotFoundError: No module"}),
        {"unknown": 1},
    )
    families = scrape(watcher_with(Snapshot(True, True, (broken,)), Clock()))
    assert by_model(families["servekit_model_healthy"]) == {"iris": 0}
    assert by_model(families["servekit_model_loadable"]) == {"iris": 0}
    assert by_model(families["servekit_model_workers_ready"]) == {"iris": 0}


def test_no_job_queue_status_no_queue_metrics() -> None:
    iris = view(describe("iris", [worker(9000, 101)], queue=None), ready=1)
    families = scrape(watcher_with(Snapshot(True, True, (iris,)), Clock()))
    assert families["servekit_model_pending_requests"] == {}
    assert families["servekit_model_queue_remaining"] == {}
    assert by_model(families["servekit_model_workers"]) == {"iris": 1}


def test_unreachable_torchserve_is_up_zero_and_no_model_series() -> None:
    watcher = watcher_with(None, Clock())
    watcher.exits.update("iris", {"9000": 101}, reasons({}))
    watcher.snapshot = Snapshot(False, False, error="cannot reach http://127.0.0.1:8080/ping")
    families = scrape(watcher)
    assert families["servekit_torchserve_up"] == {(): 0.0}
    for name in (*MODEL_GAUGES, "servekit_handler_workers"):
        assert families[name] == {}, name
    assert by_model(families["servekit_worker_restarts_total"]) == {"iris": 0}  # stays


def test_an_integer_too_large_for_a_float_does_not_break_the_scrape() -> None:
    """Found here: ``"minWorkers": 10**400`` (valid JSON) made every scrape fail."""
    huge = 10**400
    iris = view(describe("iris", [worker(9000, 101)], min_workers=huge, queue=(huge, -huge)))
    families = scrape(watcher_with(Snapshot(True, True, (iris,)), Clock()))
    assert by_model(families["servekit_model_min_workers"]) == {"iris": math.inf}
    assert by_model(families["servekit_model_queue_remaining"]) == {"iris": -math.inf}


# --- the CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--port", "x"], "--port"),
        (["--port", "-1"], "--port"),
        (["--interval", "0"], "--interval"),
        (["--interval", "-1"], "--interval"),
        (["--interval", "nan"], "--interval"),
        (["--interval", "inf"], "--interval"),
        (["--timeout", "0"], "--timeout"),
        (["--inference-url", "localhost:8080"], "--inference-url"),
        (["--inference-url", "ftp://localhost:8080"], "--inference-url"),
        (["--management-url", "http://localhost:99999"], "--management-url"),
        (["--key-file", "missing-key_file.json"], "--key-file"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if option == "--key-file":
        args = [option, str(tmp_path / args[1])]
    assert servekit_main(["exporter", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if "error:" in line]  # not the usage line
    assert option in message


@dataclass
class Exporter:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_exporter(port: int, management: str, tmp_path: Path, *more: str) -> Exporter:
    command = [sys.executable, "-m", "servekit.cli", "exporter", "--port", str(port)]
    command += ["--interval", "0.2", "--timeout", "1", "--management-url", management]
    command += ["--inference-url", management, *more]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    return Exporter(process, f"http://127.0.0.1:{port}/metrics")


def wait_for_metrics(exporter: Exporter, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert exporter.process.poll() is None, exporter.process.communicate()
        try:
            response = requests.get(exporter.url, timeout=2)
            if "servekit_torchserve_up" in response.text:
                assert response.status_code == 200
                return response.text
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no metrics at {exporter.url} within {timeout} s")


def test_a_real_run_against_no_torchserve_then_sigterm(tmp_path: Path) -> None:
    port, nothing = free_ports(2)
    exporter = start_exporter(port, f"http://127.0.0.1:{nothing}", tmp_path)
    try:
        text = wait_for_metrics(exporter)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert [s.value for s in families["servekit_torchserve_up"].samples] == [0.0]
        assert families["servekit_model_workers"].samples == []
        exporter.process.send_signal(signal.SIGTERM)
        assert exporter.process.wait(5) == 0
        out, err = exporter.process.communicate()
        assert f"http://127.0.0.1:{port}/metrics" in out
        assert "Traceback" not in err
    finally:
        exporter.stop()


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        nothing = free_ports(1)[0]
        exporter = start_exporter(port, f"http://127.0.0.1:{nothing}", tmp_path)
        try:
            _, err = exporter.process.communicate(timeout=30)
        finally:
            exporter.stop()
    assert exporter.process.returncode not in (0, None)
    assert f"127.0.0.1:{port}" in err and "in use" in err
    assert "Traceback" not in err


# --- against a TorchServe that answers garbage ----------------------------------------------------


@dataclass
class FakeTorchServe:
    """TorchServe's inference and management APIs on one loopback port, answering what the
    test sets: ``names`` listed (100 a page, with ``nextPageToken``, as TorchServe pages),
    each described by ``describes`` (default: one READY worker), ``answers`` overriding any
    path with (status, body), ``delays`` slowing a path down."""

    names: list[str] = field(default_factory=list)
    describes: dict[str, object] = field(default_factory=dict)
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    url: str = ""

    def answer(self, target: str) -> tuple[int, bytes]:
        parts = urlsplit(target)
        time.sleep(self.delays.get(parts.path, 0.0))
        if parts.path in self.answers:
            return self.answers[parts.path]
        if parts.path == "/ping":
            return 200, b'{"status": "Healthy"}'
        if parts.path == "/models":
            query = parse_qs(parts.query)
            start = int(query.get("next_page_token", ["0"])[0])
            limit = int(query.get("limit", ["100"])[0])
            page: dict[str, object] = {
                "models": [
                    {"modelName": n, "modelUrl": f"{n}.mar"}
                    for n in self.names[start : start + limit]
                ]
            }
            if start + limit < len(self.names):
                page["nextPageToken"] = str(start + limit)
            return 200, json.dumps(page).encode()
        for name in self.names:
            if parts.path == f"/models/{quote(name, safe='')}":
                document = self.describes.get(name, describe(name, [worker(9000, 0)]))
                return 200, json.dumps(document).encode()
        return 404, b'{"code": 404, "type": "ModelNotFoundException", "message": "not found"}'

    def target(self, timeout: float = 2.0) -> Target:
        return Target(self.url, self.url, timeout)


@pytest.fixture
def fake() -> Iterator[FakeTorchServe]:
    state = FakeTorchServe()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def poll(fake: FakeTorchServe, tmpdir: Path, timeout: float = 2.0) -> Watcher:
    watcher = Watcher(fake.target(timeout), tmpdir=tmpdir)
    watcher.poll()
    return watcher


def test_workers_statuses_restarts_and_recycles_from_a_polled_server(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    directory = stats_dir("iris", tmp_path)
    directory.parent.mkdir(mode=0o700)
    publish(directory, 101, json.dumps(GOOD))
    publish(directory, 102, json.dumps({**GOOD, "status": "warming"}))
    fake.names = ["iris"]
    fake.describes["iris"] = describe("iris", [worker(9000, 101), worker(9001, 102)])
    watcher = poll(fake, tmp_path)
    families = scrape(watcher)
    assert families["servekit_torchserve_up"] == {(): 1.0}
    assert by_model(families["servekit_model_workers_ready"]) == {"iris": 2}
    handler = {dict(k)["status"]: v for k, v in families["servekit_handler_workers"].items()}
    assert handler == {
        "ready": 1,
        "warming": 1,
        "degraded": 0,
        "initializing": 0,
        "draining": 0,
        "unknown": 0,
    }

    publish(directory, 101, json.dumps({**GOOD, "leaving": "recycle"}))
    fake.describes["iris"] = describe("iris", [worker(9000, 201), worker(9001, 202)])
    watcher.poll()  # 101 recycled, 102 crashed (its file says nothing of leaving)
    families = scrape(watcher)
    assert by_model(families["servekit_worker_recycles_total"]) == {"iris": 1}
    assert by_model(families["servekit_worker_restarts_total"]) == {"iris": 1}


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/models", 200, b"{not json"),
        ("/models", 500, b'{"code": 500, "message": "boom"}'),
        ("/models", 200, b'{"models": "iris"}'),
        ("/models", 200, b'{"models": [{"modelName": 5}, "x", null]}'),
        ("/models", 200, b"[" * 100_000),
        ("/ping", 200, b"garbage"),
        ("/ping", 500, b'{"status": "Unhealthy"}'),
        ("/ping", 200, b"[" * 100_000),
    ],
)
def test_a_garbage_list_or_ping_does_not_crash(
    fake: FakeTorchServe, tmp_path: Path, path: str, status: int, body: bytes
) -> None:
    fake.names = ["iris"]
    fake.answers[path] = (status, body)
    families = scrape(poll(fake, tmp_path))
    assert "servekit_torchserve_up" in families
    assert families["servekit_handler_workers"] == {} or by_model(
        families["servekit_model_workers"]
    ) == {"iris": 1}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"{not json"),
        (500, b'{"code": 500, "message": "boom"}'),
        (503, b""),
        (200, b"[]"),
        (200, b"{}"),
        (200, b'[{"modelName": "iris", "workers": "READY"}]'),
        (200, b'[{"modelName": "iris", "workers": [1, 2]}]'),
        (200, b'[{"modelName": "iris", "minWorkers": "1", "workers": []}]'),
        (200, b'[{"modelName": "iris", "workers": [{"id": [], "pid": "x", "status": 5}]}]'),
        (200, b'[{"workers": [{"pid": true}, {"pid": -3}, {"pid": 1e30}]}]'),
        (200, b'[{"jobQueueStatus": {"pendingRequests": "1", "remainingCapacity": null}}]'),
        (200, b'[{"jobQueueStatus": {"pendingRequests": true, "remainingCapacity": 1}}]'),
        (200, b'[{"minWorkers": 1' + b"0" * 400 + b"}]"),
        (200, b'[{"minWorkers": 1' + b"0" * 5000 + b"}]"),
        (200, b"[" * 100_000),
    ],
)
def test_a_garbage_describe_does_not_crash(
    fake: FakeTorchServe, tmp_path: Path, status: int, body: bytes
) -> None:
    fake.names = ["iris", "digits"]
    fake.answers["/models/iris"] = (status, body)
    watcher = poll(fake, tmp_path)
    families = scrape(watcher)
    assert "servekit_torchserve_up" in families
    if watcher.snapshot is not None and watcher.snapshot.up:
        assert by_model(families["servekit_model_workers"])["digits"] == 1


def test_a_poll_that_raises_is_torchserve_down_not_an_exit(
    fake: FakeTorchServe, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found here: a describe nested 100 000 deep raised RecursionError out of the probe
    (json's, not a ValueError) and ended the exporter. Now the poll says why, up is 0."""
    fake.names = ["iris"]
    fake.answers["/models/iris"] = (200, b"[" * 100_000)
    watcher = poll(fake, tmp_path)
    assert watcher.snapshot is not None and not watcher.snapshot.up
    assert "RecursionError" in (watcher.snapshot.error or "")
    assert "polling TorchServe" in caplog.text
    del fake.answers["/models/iris"]
    watcher.poll()
    assert by_model(scrape(watcher)["servekit_model_workers"]) == {"iris": 1}


def test_two_hundred_models(fake: FakeTorchServe, tmp_path: Path) -> None:
    fake.names = [f"model-{i:03d}" for i in range(200)]
    started = time.monotonic()
    families = scrape(poll(fake, tmp_path))
    assert time.monotonic() - started < 30
    assert set(by_model(families["servekit_model_workers"])) == set(fake.names)
    assert len(families["servekit_handler_workers"]) == 200 * len(STATUSES)
    assert set(by_model(families["servekit_worker_restarts_total"])) == set(fake.names)


def test_a_describe_slower_than_the_timeout(fake: FakeTorchServe, tmp_path: Path) -> None:
    """The slow model is unhealthy (its describe timed out); the others are exported; a
    restart during the slow describe is still counted once it answers again."""
    fake.names = ["iris", "slow"]
    fake.describes["slow"] = describe("slow", [worker(9001, 101)])
    watcher = poll(fake, tmp_path, timeout=0.5)
    fake.delays["/models/slow"] = 3.0
    started = time.monotonic()
    watcher.poll()
    assert time.monotonic() - started < 2.5  # the timeout (0.5 s), not the delay
    families = scrape(watcher)
    assert families["servekit_torchserve_up"] == {(): 1.0}
    assert by_model(families["servekit_model_healthy"]) == {"iris": 1, "slow": 0}
    fake.delays.clear()
    fake.describes["slow"] = describe("slow", [worker(9001, 202)])
    watcher.poll()
    assert by_model(scrape(watcher)["servekit_worker_restarts_total"]) == {"iris": 0, "slow": 1}


def test_a_ping_slower_than_the_timeout_is_down(fake: FakeTorchServe, tmp_path: Path) -> None:
    fake.names = ["iris"]
    fake.delays["/ping"] = 1.5
    families = scrape(poll(fake, tmp_path, timeout=0.5))
    assert families["servekit_torchserve_up"] == {(): 0.0}
    assert families["servekit_model_workers"] == {}


def test_an_unregistered_model_is_forgotten(fake: FakeTorchServe, tmp_path: Path) -> None:
    fake.names = ["iris", "digits"]
    watcher = poll(fake, tmp_path)
    assert watcher.exits.watched() == {"iris", "digits"}
    fake.names = ["iris"]
    watcher.poll()
    assert watcher.exits.watched() == {"iris"}
    families = scrape(watcher)
    assert by_model(families["servekit_model_workers"]) == {"iris": 1}
    assert by_model(families["servekit_worker_restarts_total"]) == {"iris": 0, "digits": 0}


def test_a_failed_list_forgets_nothing(fake: FakeTorchServe, tmp_path: Path) -> None:
    fake.names = ["iris"]
    watcher = poll(fake, tmp_path)
    fake.answers["/models"] = (500, b"{}")
    watcher.poll()
    assert watcher.exits.watched() == {"iris"}


@pytest.mark.parametrize(
    "name",
    [
        "iris.v2-final_1",  # what TorchServe registers: letters, digits, '_', '-', '.'
        "9lives",
        'a"b',  # not a TorchServe name; a hostile list must still render
        "back\\slash",
        "new\nline",
        "ünïcödé",
        "a/../b",
        ".hidden",
    ],
)
def test_model_names_round_trip_as_label_values(
    fake: FakeTorchServe, tmp_path: Path, name: str
) -> None:
    fake.names = [name]
    families = scrape(poll(fake, tmp_path))
    assert by_model(families["servekit_model_workers"]) == {name: 1}
    assert {dict(k)["model_name"] for k in families["servekit_handler_workers"]} == {name}


def test_a_model_list_that_never_ends(fake: FakeTorchServe, tmp_path: Path) -> None:
    pages = iter(range(10**9))

    def endless(target: str) -> tuple[int, bytes]:
        if urlsplit(target).path != "/models":
            return FakeTorchServe.answer(fake, target)
        page = next(pages)
        body = {"models": [{"modelName": f"m{page}"}], "nextPageToken": str(page + 1)}
        return 200, json.dumps(body).encode()

    fake.answer = endless  # type: ignore[method-assign]
    watcher = Watcher(fake.target())
    poller = threading.Thread(target=watcher.poll, daemon=True)
    poller.start()
    # 1,000 pages however loaded the machine; the fake's shutdown at teardown ends the poll
    poller.join(60)
    assert not poller.is_alive()


def test_a_failed_describe_is_no_figure_not_zero_workers(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    """A describe that fails (500 here; a timeout alike) must not read as an outage: no worker
    or queue series for that model, while the verdict still says unhealthy."""
    fake.names = ["good", "flaky"]
    fake.answers["/models/flaky"] = (500, b'{"code": 500, "message": "busy"}')
    families = scrape(poll(fake, tmp_path))
    for name in ("servekit_model_workers", "servekit_model_workers_ready"):
        assert by_model(families[name]) == {"good": 1}
    assert "flaky" not in {dict(k)["model_name"] for k in families["servekit_handler_workers"]}
    assert by_model(families["servekit_model_healthy"]) == {"good": 1, "flaky": 0}


def test_a_ping_of_500_is_an_unhealthy_server_not_a_down_one(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    """TorchServe answers /ping 500 once any model stayed short of minWorkers past its
    maxRetryTimeoutInSec, while the other models still serve: up, not ping-healthy."""
    fake.names = ["iris"]
    fake.answers["/ping"] = (500, b'{"status": "Unhealthy"}')
    families = scrape(poll(fake, tmp_path))
    assert families["servekit_torchserve_up"] == {(): 1.0}
    assert families["servekit_torchserve_ping_healthy"] == {(): 0.0}
    assert families["servekit_exporter_poll_ok"] == {(): 1.0}
    assert by_model(families["servekit_model_workers_ready"]) == {"iris": 1}


def test_a_new_server_reusing_worker_ids_is_no_restart(
    fake: FakeTorchServe, tmp_path: Path
) -> None:
    """A stopped and started TorchServe numbers its workers from 9000 again, with new pids
    and a new start time: not a crash of the old ones."""
    fake.names = ["iris"]
    fake.describes["iris"] = describe("iris", [worker(9000, 101)])
    watcher = poll(fake, tmp_path)
    restarted = {**worker(9000, 202), "startTime": "2026-01-01T01:00:00.000Z"}
    fake.describes["iris"] = describe("iris", [restarted])
    watcher.poll()
    assert by_model(scrape(watcher)["servekit_worker_restarts_total"]) == {"iris": 0}
    fake.describes["iris"] = describe("iris", [{**restarted, "pid": 303}])
    watcher.poll()  # the same worker (id and start time) with a new process: a restart
    assert by_model(scrape(watcher)["servekit_worker_restarts_total"]) == {"iris": 1}

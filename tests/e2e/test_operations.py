"""The playground's four questions, worker lifecycle and recycling, on a real TorchServe."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from servekit.health.probe import Target, probe
from servekit.health.verdict import HealthReport
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, customized, describe

pytestmark = pytest.mark.e2e


@dataclass
class OpsServer:
    server: TorchServe
    startup: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)

    def check(
        self, *, customized: bool = False, mode: str = "default", models: tuple[str, ...] = ()
    ) -> HealthReport:
        target = Target(self.server.inference_url, self.server.management_url, timeout=10)
        return probe(target, models, customized=customized, mode=mode)

    def predict(self, model: str, body: Any, timeout: float = 30) -> requests.Response:
        url = f"{self.server.inference_url}/predictions/{model}"
        return requests.post(url, json=body, timeout=timeout)


def observe_startup(server: TorchServe, model: str) -> list[tuple[tuple[str, ...], str | None]]:
    """Worker states and handler status of ``model`` from start until the handler is ready."""
    seen: list[tuple[tuple[str, ...], str | None]] = []
    deadline = time.monotonic() + 180
    status: str | None = None
    while status != "ready" and time.monotonic() < deadline:
        states = tuple(w["status"] for w in describe(server, model)["workers"])
        status = customized(server, model).get("status") if "READY" in states else None
        if not seen or seen[-1] != (states, status):
            seen.append((states, status))
        time.sleep(0.05)
    return seen


@pytest.fixture(scope="module")
def ops(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsServer]:
    workdir = tmp_path_factory.mktemp("torchserve-ops")
    with running(
        ROOT / "config.properties",
        workdir,
        model_store=model_store,
        models=["slow_model", "leaky_model"],
    ) as server:
        ops = OpsServer(server, observe_startup(server, "slow_model"))
        yield ops


# ----- Q3 startup and Q4 custom status -------------------------------------------------------
def test_startup_goes_from_unloading_through_warming_to_ready(ops: OpsServer) -> None:
    states = [s for s, _ in ops.startup]
    statuses = [st for _, st in ops.startup if st is not None]
    assert ("UNLOADING",) in states or () in states, ops.startup
    assert statuses[0] == "warming" and statuses[-1] == "ready", ops.startup


def test_health_check_follows_warming_then_ready(ops: OpsServer) -> None:
    # the startup observation saw 'warming' while the worker was already READY: exactly when
    # /ping and the plain describe say all is well but --customized must not
    warming = [s for s in ops.startup if s[1] == "warming"]
    assert warming and warming[0][0] == ("READY",)
    report = ops.check(customized=True, models=("slow_model",))
    assert report.exit_code == 0 and report.models[0].handler_status == "ready"


def test_inputs_that_fail_inside_the_model_do_not_move_readiness(ops: OpsServer) -> None:
    for _ in range(6):
        assert ops.predict("slow_model", {"value": 1, "fail": True}).status_code == 500
    report = ops.check(customized=True, models=("slow_model",))
    assert report.exit_code == 0 and report.models[0].handler_status == "ready"
    assert customized(ops.server, "slow_model")["self_test"]["self_tests"] >= 1


def test_an_outage_makes_the_handler_degraded_and_it_recovers_without_traffic(
    ops: OpsServer,
) -> None:
    outage = ops.server.tmpdir / "slow_model.outage"
    outage.touch()
    try:
        for _ in range(3):
            assert ops.predict("slow_model", {"value": 1}).status_code == 500
        report = ops.check(customized=True, models=("slow_model",))
        assert report.exit_code == 1
        assert report.models[0].handler_status == "degraded"
        assert report.models[0].reason == "1/1 workers READY, handler status degraded"
    finally:
        outage.unlink()
    # no inference request from here: the probe's own describes re-run the self-test
    deadline = time.monotonic() + 30
    while (report := ops.check(customized=True, models=("slow_model",))).exit_code != 0:
        assert time.monotonic() < deadline, report.models[0].reason
        time.sleep(0.2)
    assert ops.predict("slow_model", {"value": 2}).json() == {"value": 2.0, "double": 4.0}


# ----- Q1 queue overflow ---------------------------------------------------------------------
def test_a_burst_overflows_the_queue_with_fast_503s_and_every_accepted_answer_right(
    ops: OpsServer,
) -> None:
    def send(i: int) -> tuple[int, int, Any, float]:
        started = time.monotonic()
        response = ops.predict("slow_model", {"value": i})
        return i, response.status_code, response.json(), time.monotonic() - started

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    codes = [code for _, code, _, _ in results]
    assert set(codes) <= {200, 503}
    assert codes.count(503) >= 5  # one in flight + jobQueueSize 4 can be accepted at most
    for i, code, body, _ in results:
        if code == 200:
            assert body == {"value": float(i), "double": 2.0 * i}
        else:
            assert body["code"] == 503
    entry = describe(ops.server, "slow_model")
    assert entry["jobQueueStatus"]["pendingRequests"] == 0
    assert ops.predict("slow_model", {"value": 5}).json() == {"value": 5.0, "double": 10.0}


@pytest.fixture()
def saturated(ops: OpsServer) -> Iterator[OpsServer]:
    """Keep slow_model's job queue full until the test is done."""
    stop = threading.Event()

    def pressure() -> None:
        while not stop.is_set():
            ops.predict("slow_model", {"value": 0})

    threads = [threading.Thread(target=pressure) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while describe(ops.server, "slow_model")["jobQueueStatus"]["remainingCapacity"] > 0:
        assert time.monotonic() < deadline, "the queue never filled"
        time.sleep(0.01)
    try:
        yield ops
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_health_reports_saturation_without_calling_the_server_down(saturated: OpsServer) -> None:
    report = saturated.check(models=("slow_model",))
    assert report.exit_code == 0
    assert "job queue full" in report.models[0].reason
    assert report.models[0].queue is not None and report.models[0].queue.remaining_capacity == 0
    assert saturated.check(mode="readiness", models=("slow_model",)).exit_code == 1
    assert saturated.check(mode="liveness").exit_code == 0


def test_customized_describe_in_a_full_queue_is_explained(saturated: OpsServer) -> None:
    report = saturated.check(customized=True, models=("slow_model",))
    assert report.exit_code == 1
    reason = report.models[0].reason
    assert "describe got 503 (job queue full)" in reason


# ----- Q3 scaling and a killed worker -------------------------------------------------------
def scale(server: TorchServe, model: str, workers: int) -> None:
    server.management().scale(model, workers, timeout=120)


def test_scaling_through_the_management_api(ops: OpsServer) -> None:
    scale(ops.server, "slow_model", 2)
    entry = describe(ops.server, "slow_model")
    assert [w["status"] for w in entry["workers"]] == ["READY", "READY"]
    assert ops.check(models=("slow_model",)).models[0].reason == "2/2 workers READY"
    scale(ops.server, "slow_model", 1)
    assert len(describe(ops.server, "slow_model")["workers"]) == 1


def test_a_killed_worker_fails_only_its_request_and_comes_back(ops: OpsServer) -> None:
    victim = describe(ops.server, "leaky_model")["workers"][0]["pid"]
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = requests.post(
                f"{ops.server.inference_url}/predictions/leaky_model", data=b"x", timeout=30
            )
            outcomes.append((response.status_code, response.text))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        while len(outcomes) < 10:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        degraded = wait_for(ops, lambda r: "degraded" in r.models[0].reason, "leaky_model")
        healthy = wait_for(ops, lambda r: r.exit_code == 0, "leaky_model")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert degraded.exit_code == 1
    assert degraded.models[0].reason.startswith("1/2 workers READY")
    assert victim not in [w["pid"] for w in describe(ops.server, "leaky_model")["workers"]]
    failures = [(code, text) for code, text in outcomes if code != 200]
    assert len(failures) <= 2  # at most the request each client had in flight there
    # TorchServe answers "Worker died." with 507 when the exit code is 137 (SIGKILL, as OOM)
    assert all(code in (500, 507) and "Worker died" in text for code, text in failures), failures
    assert healthy.models[0].reason.startswith("2/2 workers READY")


def wait_for(ops: OpsServer, done: Any, model: str, timeout: float = 120) -> HealthReport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = ops.check(models=(model,))
        if done(report):
            return report
        time.sleep(0.02)
    raise AssertionError(f"{model}: condition not reached in {timeout} s")


# ----- recycling ------------------------------------------------------------------------------
def run_recycler(server: TorchServe, *args: str) -> subprocess.CompletedProcess[str]:
    """``servekit recycle`` on leaky_model, with the server's TMPDIR."""
    command = [
        sys.executable,
        "-m",
        "servekit.cli",
        "recycle",
        "--management-url",
        server.management_url,
        "--model",
        "leaky_model",
        *args,
    ]
    return subprocess.run(
        command, env=server.env(), capture_output=True, text=True, timeout=300, check=False
    )


def test_recycling_leaky_workers_drops_no_request_and_keeps_min_workers_ready(
    ops: OpsServer,
) -> None:
    server = ops.server
    for _ in range(20):
        assert (
            requests.post(
                f"{server.inference_url}/predictions/leaky_model", data=b"x", timeout=30
            ).status_code
            == 200
        )
    before = {w["pid"] for w in describe(server, "leaky_model")["workers"]}
    statuses: list[int] = []
    failures: list[str] = []
    ready_seen: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = requests.post(
                f"{server.inference_url}/predictions/leaky_model", data=b"x", timeout=30
            )
            statuses.append(response.status_code)
            if response.status_code != 200:
                failures.append(response.text)

    def monitor() -> None:
        while not stop.is_set():
            workers = describe(server, "leaky_model")["workers"]
            ready_seen.append(sum(w["status"] == "READY" for w in workers))
            time.sleep(0.02)

    threads = [threading.Thread(target=load) for _ in range(2)] + [threading.Thread(target=monitor)]
    for thread in threads:
        thread.start()
    try:
        done = run_recycler(server, "--max-memory-mb", "1")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("memory" in line and "> 1 MB" in line for line in lines)
    after = {w["pid"] for w in describe(server, "leaky_model")["workers"]}
    assert not before & after and len(after) == 2
    assert statuses and set(statuses) == {200}, failures
    assert min(ready_seen) >= 2


def test_recycling_after_n_requests(ops: OpsServer) -> None:
    server = ops.server
    for _ in range(12):
        requests.post(f"{server.inference_url}/predictions/leaky_model", data=b"x", timeout=30)
    done = run_recycler(server, "--max-requests", "3", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count('"reason": "') >= 1
    assert "requests >= 3" in done.stdout


def worker_processes(server: TorchServe) -> set[int]:
    """The Python worker processes in the server's process group, listed or not."""
    assert server.process is not None
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(OSError):
            command = " ".join(process.info["cmdline"] or [])
            if "model_service_worker" in command and os.getpgid(process.pid) == server.process.pid:
                found.add(process.pid)
    return found


def listed_workers(server: TorchServe) -> set[int]:
    return {w["pid"] for m in ("slow_model", "leaky_model") for w in describe(server, m)["workers"]}


def test_a_recycle_leaves_no_worker_process_behind(ops: OpsServer) -> None:
    """The retired extra worker is stopped for good: TorchServe restarts a worker that exited
    and a scale-down during that back-off did not cancel the restart (an unlisted process)."""
    server = ops.server
    assert worker_processes(server) == listed_workers(server)
    before = len(worker_processes(server))
    done = run_recycler(server, "--max-memory-mb", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    restarted = "State change WORKER_SCALED_DOWN -> WORKER_STARTED"
    # a leftover would start after TorchServe's restart back-off (1 s) and the worker's startup
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert restarted not in server.log_tail("ts_log.log", lines=10_000)
        assert len(worker_processes(server)) == before
        time.sleep(0.2)
    assert worker_processes(server) == listed_workers(server)


def retired_processes(server: TorchServe) -> set[int]:
    """Workers parked in a describe (renamed ``sk-retired``), listed or not."""
    found = set()
    for pid in worker_processes(server):
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).name() == "sk-retired":
                found.add(pid)
    return found


@pytest.mark.parametrize("stop_when", ["scaled up", "parked"])
def test_a_recycle_stopped_by_sigterm_leaves_the_model_as_it_was(
    ops: OpsServer, stop_when: str
) -> None:
    """SIGTERM (how ``--every`` is stopped) right after the scale-up, or while the extra worker
    holds a describe: the extra worker is removed, minWorkers/maxWorkers are as before, no
    worker is left holding describes (TorchServe would wait 300 s for it)."""
    server = ops.server
    before = describe(server, "leaky_model")
    count = len(before["workers"])
    command = [sys.executable, "-m", "servekit.cli", "recycle", "--model", "leaky_model"]
    command += ["--management-url", server.management_url, "--max-memory-mb", "1"]
    recycler = subprocess.Popen(command, env=server.env(), stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (
            len(describe(server, "leaky_model")["workers"]) > count
            if stop_when == "scaled up"
            else retired_processes(server)
        ):
            assert recycler.poll() is None and time.monotonic() < deadline, stop_when
            time.sleep(0.01)
        recycler.send_signal(signal.SIGTERM)
        returncode = recycler.wait(60)
    finally:
        if recycler.poll() is None:
            recycler.kill()
    after = describe(server, "leaky_model")
    assert [after[k] for k in ("minWorkers", "maxWorkers")] == [
        before[k] for k in ("minWorkers", "maxWorkers")
    ]
    deadline = time.monotonic() + 60
    while sum(w["status"] == "READY" for w in describe(server, "leaky_model")["workers"]) < count:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(describe(server, "leaky_model")["workers"]) == count
    assert not retired_processes(server)
    for _ in range(2 * count):  # what the readiness probe sends: each answers at once
        started = time.monotonic()
        assert customized(server, "leaky_model")
        assert time.monotonic() - started < 2
    time.sleep(3)  # a process removed during a restart back-off would be back by now
    assert worker_processes(server) == listed_workers(server)
    assert returncode == 128 + signal.SIGTERM  # after its clean-up


# ----- Q2 init failure ------------------------------------------------------------------------
def test_init_failure_is_reported_before_ping_turns_500(model_store: Path, tmp_path: Path) -> None:
    """failing_model (maxRetryTimeoutInSec 10): ours says unhealthy at once, /ping only later."""
    with running(
        ROOT / "config.properties",
        tmp_path,
        model_store=model_store,
        models=["empty_model", "failing_model"],
    ) as server:
        ops = OpsServer(server)
        first_unhealthy: float | None = None
        first_ping_500: float | None = None
        timeline: list[tuple[int, int, str]] = []
        deadline = time.monotonic() + 120
        while first_ping_500 is None and time.monotonic() < deadline:
            report = ops.check(models=("failing_model",))
            readiness = ops.check(mode="readiness", models=("failing_model",))
            liveness = ops.check(mode="liveness")
            timeline.append((report.exit_code, liveness.exit_code, report.models[0].reason))
            if report.exit_code == 1 and first_unhealthy is None:
                first_unhealthy = time.monotonic()
                assert report.models[0].reason == "0/1 workers READY (UNLOADING)"
                assert readiness.exit_code == 1
            if report.ping is not None and report.ping.status_code == 500:
                first_ping_500 = time.monotonic()
            # liveness follows /ping alone: 200 while TorchServe still retries (no restart),
            # 1 once the retry window is spent (failed for good: a restart may help)
            assert liveness.ping is not None
            assert liveness.exit_code == (0 if liveness.ping.healthy else 1), timeline
            time.sleep(0.1)
    assert first_unhealthy is not None and first_ping_500 is not None, timeline
    assert first_unhealthy < first_ping_500

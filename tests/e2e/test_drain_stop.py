"""Stopping a server under load loses nothing it accepted: `servekit stop` beside a running
TorchServe, and SIGTERM to the SageMaker entrypoint (what tini forwards in the images).

The load is closed-loop on slow_model (one worker, 200 ms a request, a queue of 4), so at the
moment of the stop one request is in the worker's hands and others are queued. Every request
must end as an answer (200 while accepted, 503 + Retry-After once refusing) or a refused
connection once the server is gone: never cut off after it was sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from servekit.bench.closed_loop import (
    ANSWERED,
    CONNECT_REFUSED,
    CUT,
    REFUSED_503,
    TIMEOUT,
    ClosedLoop,
)
from servekit.ops.frontend import PID_FILE
from servekit.runtime.draining import drain_dir, marker_path
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, wait_ready
from tests.e2e.test_sagemaker_entrypoint import (
    Container,
    entrypoint_env,
    kill_group,
    start,
    wait_for_ping,
)

pytestmark = pytest.mark.e2e
CLIENTS = 4  # one request in the worker's hands, three queued: within slow_model's queue of 4
SERVEKIT = [sys.executable, "-m", "servekit.cli"]
BODY = b'{"value": 1.5}'


@pytest.fixture
def slow_server(model_store: Path, tmp_path: Path) -> Iterator[TorchServe]:
    with running(
        ROOT / "config.properties", tmp_path / "ts", model_store=model_store, models=["slow_model"]
    ) as server:
        wait_ready(server, ["slow_model"])
        wait_handler_ready(server)
        yield server


def wait_handler_ready(server: TorchServe, timeout: float = 60) -> None:
    """slow_model warms up in the background: wait until its handler says ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.management().entry("slow_model", customized=True)
        metadata = entry.get("customizedMetadata")
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        if metadata and metadata.get("status") == "ready":
            return
        time.sleep(0.2)
    raise AssertionError("slow_model's handler never said ready")


def run_servekit(server: TorchServe, *args: str, timeout: float = 120) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SERVEKIT, *args],
        env=server.env(),
        cwd=server.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def readiness(server: TorchServe) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *SERVEKIT,
            "health",
            "--probe",
            "readiness",
            "--customized",
            "--inference-url",
            server.inference_url,
            "--management-url",
            server.management_url,
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_nothing_lost(load: ClosedLoop) -> None:
    outcomes = load.outcomes()
    results = load.snapshot()
    assert outcomes[CUT] == 0 and outcomes[TIMEOUT] == 0, [
        r.error for r in results if r.kind in (CUT, TIMEOUT)
    ]
    answered = [r for r in results if r.kind == ANSWERED]
    assert answered and {r.status for r in answered} == {200}, {r.status for r in answered}
    assert outcomes[CONNECT_REFUSED] == CLIENTS, outcomes  # every client found the server gone


def test_servekit_stop_drains_under_load_and_readiness_fails_first(
    slow_server: TorchServe,
) -> None:
    url = f"{slow_server.inference_url}/predictions/slow_model"
    frontend = int((slow_server.tmpdir / PID_FILE).read_text())
    workers = {c.pid for c in psutil.Process(frontend).children(recursive=True)}
    assert readiness(slow_server).returncode == 0
    with ClosedLoop(url, BODY, clients=CLIENTS) as load:
        load.wait_for(10)
        started = time.monotonic()
        stop = run_servekit(slow_server, "stop", "--announce", "2", "--timeout", "60", "--json")
        time.sleep(0.8)  # inside the announce: still serving, but no longer ready
        during = readiness(slow_server)
        out, err = stop.communicate(timeout=120)
        took = time.monotonic() - started
        deadline = time.monotonic() + 10
        while load.outcomes()[CONNECT_REFUSED] < CLIENTS and time.monotonic() < deadline:
            time.sleep(0.1)
    assert stop.returncode == 0, out + err
    assert during.returncode == 1 and "draining" in during.stdout + during.stderr, during
    report = json.loads(out)
    assert report["clean"] and report["left"] == 0, report
    assert_nothing_lost(load)
    outcomes = load.outcomes()
    # what the drain itself counted agrees with the clients: every 503 it sent reached one
    assert report["refused"] == outcomes[REFUSED_503], (report, outcomes)
    # every request sent before refusing began was accepted: queued ones too (slack for the
    # time between a client's clock read and its request reaching the server)
    accepted = [r for r in load.snapshot() if r.sent_at < report["refusing_at"] - 0.1]
    assert accepted and {r.kind for r in accepted} == {ANSWERED}, [
        (round(report["refusing_at"] - r.sent_at, 3), r.kind)
        for r in accepted
        if r.kind != ANSWERED
    ]
    assert report["models"]["slow_model"] >= CLIENTS - 1, report  # the queue was counted
    assert report["answered"] >= 1
    assert not psutil.pid_exists(frontend) or psutil.Process(frontend).status() == "zombie"
    assert not [p for p in workers if psutil.pid_exists(p)], "a worker outlived the stop"
    assert not (slow_server.tmpdir / PID_FILE).exists()
    print(f"servekit stop: {dict(outcomes)} in {took:.1f} s; report {report}")


def test_a_drain_given_up_or_killed_leaves_the_server_serving(slow_server: TorchServe) -> None:
    stop = run_servekit(slow_server, "stop", "--announce", "30")
    time.sleep(2)
    assert readiness(slow_server).returncode == 1
    second = subprocess.run(
        [*SERVEKIT, "stop"], env=slow_server.env(), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1 and "is draining this server" in second.stderr, second
    assert readiness(slow_server).returncode == 1  # the second stop did not undo the first
    stop.send_signal(signal.SIGINT)
    out, err = stop.communicate(timeout=30)
    assert stop.returncode == 128 + signal.SIGINT, out + err
    assert "drain given up" in err
    assert readiness(slow_server).returncode == 0
    # a drainer killed outright (a preStop hook past its grace period) leaves its marker
    # behind: the handlers see that its writer is gone and serve on, ready
    killed = run_servekit(slow_server, "stop", "--announce", "20", "--timeout", "50")
    time.sleep(2)
    assert readiness(slow_server).returncode == 1
    killed.kill()
    killed.wait(30)
    frontend = int((slow_server.tmpdir / PID_FILE).read_text())
    assert marker_path(drain_dir(slow_server.tmpdir), frontend).exists()
    assert readiness(slow_server).returncode == 0  # the marker is still there, and ignored
    with ClosedLoop(f"{slow_server.inference_url}/predictions/slow_model", BODY, clients=2) as load:
        load.wait_for(6)
    assert load.outcomes()[REFUSED_503] == 0 and {r.status for r in load.snapshot()} == {200}


def test_servekit_stop_without_a_server_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([*SERVEKIT, "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "no TorchServe pid file" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_to_the_entrypoint_drains_under_load(model_store: Path, tmp_path: Path) -> None:
    """As `tini -g` does: SIGTERM to the entrypoint's whole process group."""
    env = entrypoint_env(
        tmp_path,
        model_store,
        SAGEMAKER_MODEL="slow_model",
        SERVEKIT_DRAIN_ANNOUNCE="1",
        SERVEKIT_DRAIN_TIMEOUT="30",
    )
    process = start(["serve"], env, tmp_path)
    try:
        container = Container(
            process,
            f"http://127.0.0.1:{env['SAGEMAKER_BIND_TO_PORT']}",
            f"http://127.0.0.1:{env['SERVEKIT_MANAGEMENT_PORT']}",
            tmp_path,
        )
        wait_for_ping(container)
        tree = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
        with ClosedLoop(f"{container.url}/invocations", BODY, clients=CLIENTS) as load:
            load.wait_for(10)
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)
            code = process.wait(90)
            took = time.monotonic() - started
            watch = threading.Event()
            deadline = time.monotonic() + 10
            while load.outcomes()[CONNECT_REFUSED] < CLIENTS and time.monotonic() < deadline:
                watch.wait(0.1)
        log = container.log()
        assert code == 0, log
        assert "every accepted request answered" in log, log
        assert_nothing_lost(load)
        assert not [p for p in tree if psutil.pid_exists(p) and _not_zombie(p)], (
            "a process of the entrypoint outlived it"
        )
        print(f"entrypoint SIGTERM: {dict(load.outcomes())}, exit in {took:.1f} s")
    finally:
        kill_group(process)


def _not_zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False

"""scripts/health_check.py (and ``servekit health``, the same command) against real TorchServe
servers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit.serve.server import TorchServe, free_ports, running
from servekit.serve.settings import archived_setting
from tests.e2e.conftest import ROOT, wait_ready

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "health_check.py"


def health_check(server: TorchServe | None, *args: str) -> subprocess.CompletedProcess[str]:
    urls: list[str] = []
    if server is not None:
        urls = ["--inference-url", server.inference_url, "--management-url", server.management_url]
    return subprocess.run(
        [sys.executable, str(SCRIPT), *urls, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_healthy_server_exits_0(server: TorchServe) -> None:
    done = health_check(server)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {m: archived_setting(ROOT, m).workers for m in ("digits", "empty_model", "iris")}
    assert done.stdout.splitlines() == [
        "ping: Healthy",
        *(f"{m}: {n}/{n} workers READY" for m, n in workers.items()),  # as the specs say
    ]


def test_servekit_health_is_the_same_command(server: TorchServe, tmp_path: Path) -> None:
    urls = ["--inference-url", server.inference_url, "--management-url", server.management_url]
    done = subprocess.run(
        [sys.executable, "-m", "servekit.cli", "health", *urls, "--customized"],
        cwd=tmp_path,  # any directory: a health check needs no project
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == health_check(server, "--customized").stdout


def test_customized_json_reports_handler_status(server: TorchServe) -> None:
    done = health_check(server, "--customized", "--json", "--model", "iris")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] is True and report["exit_code"] == 0
    (iris,) = report["models"]
    assert iris["name"] == "iris" and iris["handler_status"] == "ready"
    assert iris["ready"] == archived_setting(ROOT, "iris").workers
    assert iris["queue"]["remainingCapacity"] > 0


def test_unregistered_model_is_unhealthy(server: TorchServe) -> None:
    done = health_check(server, "--model", "ghost")
    assert done.returncode == 1
    assert "ghost: not registered" in done.stdout


def test_nothing_listening_exits_3() -> None:
    inference, management = free_ports(2)
    done = health_check(
        None,
        "--inference-url",
        f"http://127.0.0.1:{inference}",
        "--management-url",
        f"http://127.0.0.1:{management}",
    )
    assert done.returncode == 3
    assert "cannot reach" in done.stderr


def test_bad_usage_exits_2() -> None:
    assert health_check(None, "--inference-url", "ftp://host").returncode == 2
    assert health_check(None, "--wait", "-1").returncode == 2


@pytest.fixture(scope="module")
def failing_server(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    """empty_model (fine) beside failing_model, whose initialize always fails."""
    workdir = tmp_path_factory.mktemp("torchserve-failing")
    with running(
        ROOT / "config.properties",
        workdir,
        model_store=model_store,
        models=["empty_model", "failing_model"],
    ) as ts:
        wait_ready(ts, ["empty_model"])
        yield ts


def test_crash_looping_model_is_reported_unhealthy(failing_server: TorchServe) -> None:
    done = health_check(failing_server, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1
    verdicts = {m["name"]: m for m in report["models"]}
    assert verdicts["empty_model"]["healthy"] is True
    assert verdicts["failing_model"]["healthy"] is False
    assert verdicts["failing_model"]["reason"] == "0/1 workers READY (UNLOADING)"
    assert verdicts["failing_model"]["states"] == ["UNLOADING"]


def test_wait_gives_up_at_the_deadline(failing_server: TorchServe) -> None:
    done = health_check(failing_server, "--model", "failing_model", "--wait", "2")
    assert done.returncode == 1
    assert "failing_model: 0/1 workers READY" in done.stdout


def test_the_reason_of_an_init_failure_is_shown(failing_server: TorchServe) -> None:
    done = health_check(
        failing_server, "--model", "failing_model", "--log-dir", str(failing_server.log_dir)
    )
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == (
        "failing_model: 0/1 workers READY (UNLOADING), init error: model 'failing_model' "
        "fails to initialize on purpose (demo of init failure)"
    )

"""servekit.health: verdicts (pure), probing, rendering, waiting, and the CLI's exits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servekit.health.cli import UsageError, load_keys, main
from servekit.health.probe import http_reason, wait_until_healthy
from servekit.health.render import render_json, render_text
from servekit.health.verdict import (
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    HealthReport,
    ModelHealth,
    PingResult,
    evaluate_describe,
    evaluate_model,
    not_registered,
    parse_model_page,
    plan_checks,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "health_check.py"
HEALTHY_PING = PingResult(200, "Healthy")


def worker(status: str, wid: str = "9000") -> dict[str, Any]:
    return {
        "id": wid,
        "startTime": "2025-01-01T00:00:00.000Z",
        "status": status,
        "memoryUsage": 123456,
        "pid": 4242,
        "gpu": False,
        "gpuUsage": "N/A",
    }


def entry(*states: str, min_workers: int = 2, name: str = "iris", **extra: Any) -> dict[str, Any]:
    """A describe entry shaped like TorchServe 0.12's ``GET /models/{name}`` answer."""
    return {
        "modelName": name,
        "modelVersion": "1.0",
        "modelUrl": f"{name}.mar",
        "runtime": "python",
        "minWorkers": min_workers,
        "maxWorkers": max(min_workers, 1),
        "batchSize": 1,
        "maxBatchDelay": 100,
        "maxRetryTimeoutInSec": 300,
        "loadedAtStartup": True,
        "workers": [worker(s, str(9000 + i)) for i, s in enumerate(states)],
        "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
        **extra,
    }


def metadata(status: str) -> str:
    """``customizedMetadata`` as TorchServe sends it: a JSON *string*, pretty-printed."""
    return json.dumps({"status": status, "labels": 3}, indent=2)


# --- workers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "min_workers", "healthy", "reason"),
    [
        (("READY", "READY"), 2, True, "2/2 workers READY"),
        (("UNLOADING", "UNLOADING"), 2, False, "0/2 workers READY (UNLOADING)"),
        (("READY", "UNLOADING"), 2, False, "1/2 workers READY (UNLOADING), degraded"),
        (("READY", "UNLOADING"), 1, True, "1/2 workers READY (UNLOADING)"),
        (("READY",), 0, True, "1/1 workers READY"),
        ((), 0, False, "0/0 workers READY, need 1"),
        (
            ("READY", "STOPPED", "UNLOADING", "STOPPED"),
            3,
            False,
            "1/4 workers READY (STOPPED, UNLOADING), need 3, degraded",
        ),
    ],
)
def test_ready_workers_decide(
    states: tuple[str, ...], min_workers: int, healthy: bool, reason: str
) -> None:
    result = evaluate_model(entry(*states, min_workers=min_workers))
    assert (result.healthy, result.reason) == (healthy, reason)
    assert result.ready == states.count("READY")
    assert result.workers == len(states)


def test_result_carries_queue_and_min_workers() -> None:
    result = evaluate_model(
        entry("READY", jobQueueStatus={"remainingCapacity": 7, "pendingRequests": 93})
    )
    assert result.min_workers == 2
    assert result.queue is not None
    assert (result.queue.remaining_capacity, result.queue.pending_requests) == (7, 93)


@pytest.mark.parametrize(
    ("workers", "min_workers"),
    [("nope", 1), ([1, 2], 1), ([worker("READY")], "2"), ([worker("READY")], True)],
)
def test_malformed_entry_is_unhealthy_not_a_crash(workers: object, min_workers: object) -> None:
    result = evaluate_model(entry(workers=workers, minWorkers=min_workers))
    assert not result.healthy
    assert result.reason.startswith("unexpected describe response:")


# --- describe documents ------------------------------------------------------------------------


def test_describe_uses_first_entry_of_the_list() -> None:
    document = [entry("READY", "READY"), entry("UNLOADING", modelVersion="2.0")]
    assert evaluate_describe("iris", document).healthy


@pytest.mark.parametrize("document", [[], {"modelName": "iris"}, None, ["iris"], "text"])
def test_describe_of_wrong_shape_is_unhealthy(document: object) -> None:
    result = evaluate_describe("iris", document)
    assert (result.name, result.healthy) == ("iris", False)
    assert "unexpected describe response" in result.reason


def test_not_registered() -> None:
    assert not_registered("digits") == ModelHealth("digits", False, "not registered")


# --- customized metadata -----------------------------------------------------------------------


def test_customized_ready_handler_is_healthy() -> None:
    result = evaluate_model(
        entry("READY", "READY", customizedMetadata=metadata("ready")), customized=True
    )
    assert result.healthy
    assert result.handler_status == "ready"
    assert result.reason == "2/2 workers READY, handler status ready"


def test_customized_handler_not_ready_is_unhealthy_even_with_ready_workers() -> None:
    result = evaluate_model(
        entry("READY", "READY", customizedMetadata=metadata("warming")), customized=True
    )
    assert not result.healthy
    assert result.reason == "2/2 workers READY, handler status warming"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "no customizedMetadata"),
        ("{not json", "not JSON"),
        ('["ready"]', "not a JSON object"),
        ('{"state": "ready"}', "no string 'status'"),
    ],
)
def test_customized_metadata_problems_are_reasons(value: object, needle: str) -> None:
    extra: dict[str, Any] = {} if value is None else {"customizedMetadata": value}
    result = evaluate_model(entry("READY", "READY", **extra), customized=True)
    assert not result.healthy
    assert result.handler_status is None
    assert needle in result.reason


def test_metadata_ignored_without_customized() -> None:
    result = evaluate_model(entry("READY", "READY", customizedMetadata=metadata("warming")))
    assert result.healthy
    assert result.handler_status is None


def test_authorization_rejected_reason() -> None:
    body = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}
    assert http_reason(400, body) == "authorization rejected (400)"
    queue_full = {"code": 503, "message": 'Model "iris" has no worker to serve inference request'}
    assert http_reason(503, queue_full).startswith('HTTP 503: Model "iris" has no worker')
    assert http_reason(502, None) == "HTTP 502"


# --- listing -----------------------------------------------------------------------------------


def test_model_page_and_token() -> None:
    page = {
        "models": [
            {"modelName": "digits", "modelUrl": "digits.mar"},
            {"modelName": "iris", "modelUrl": "iris.mar"},
        ],
        "nextPageToken": "2",
    }
    assert parse_model_page(page) == (["digits", "iris"], "2")
    assert parse_model_page({"models": []}) == ([], None)


def test_plan_checks_marks_unregistered_requests() -> None:
    assert plan_checks([], ["digits", "iris"]) == [("digits", True), ("iris", True)]
    assert plan_checks(["iris", "ghost", "iris"], ["digits", "iris"]) == [
        ("iris", True),
        ("ghost", False),
    ]
    assert plan_checks(["iris"], []) == [("iris", False)]


# --- reports and rendering ---------------------------------------------------------------------


def test_unhealthy_report_renders_text_and_json() -> None:
    report = HealthReport(HEALTHY_PING, (evaluate_model(entry("UNLOADING", "UNLOADING")),))
    assert report.exit_code == EXIT_UNHEALTHY
    assert render_text(report) == "ping: Healthy\niris: 0/2 workers READY (UNLOADING)"
    assert json.loads(render_json(report)) == {
        "probe": "default",
        "healthy": False,
        "exit_code": 1,
        "ping": {"status_code": 200, "status": "Healthy"},
        "models": [
            {
                "name": "iris",
                "healthy": False,
                "ready": 0,
                "workers": 2,
                "min_workers": 2,
                "states": ["UNLOADING"],
                "queue": {"remainingCapacity": 100, "pendingRequests": 0},
                "handler_status": None,
                "reason": "0/2 workers READY (UNLOADING)",
            }
        ],
        "error": None,
    }


def test_failed_ping_is_unhealthy_even_with_healthy_models() -> None:
    report = HealthReport(PingResult(500, "Unhealthy"), (evaluate_model(entry("READY", "READY")),))
    assert report.exit_code == EXIT_UNHEALTHY
    assert render_text(report).splitlines()[0] == "ping: 500 Unhealthy"


def test_no_models_registered_is_healthy() -> None:
    report = HealthReport(HEALTHY_PING, ())
    assert report.exit_code == EXIT_HEALTHY
    assert "no models registered" in render_text(report)


def test_rejected_token_and_list_failure_render() -> None:
    report = HealthReport(
        PingResult(400, "authorization rejected (400)"),
        error="model list failed: authorization rejected (400)",
    )
    assert report.exit_code == EXIT_UNHEALTHY
    assert render_text(report) == (
        "ping: authorization rejected (400)\n"
        "models: model list failed: authorization rejected (400)"
    )


def test_unreachable_report() -> None:
    report = HealthReport(
        None, error="cannot reach http://h:1/ping: connection refused", unreachable=True
    )
    assert (report.healthy, report.exit_code) == (False, EXIT_UNREACHABLE)
    assert json.loads(render_json(report))["ping"] is None


# --- waiting -----------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


UNREACHABLE = HealthReport(None, error="cannot reach", unreachable=True)
UNHEALTHY = HealthReport(HEALTHY_PING, (not_registered("iris"),))
HEALTHY = HealthReport(HEALTHY_PING, ())


def test_wait_keeps_polling_through_unreachable_until_healthy() -> None:
    answers, fake = iter([UNREACHABLE, UNHEALTHY, HEALTHY]), FakeTime()
    report = wait_until_healthy(lambda: next(answers), 10, 0.5, fake.clock, fake.sleep)
    assert report is HEALTHY
    assert fake.sleeps == [0.5, 0.5]


@pytest.mark.parametrize(("last", "code"), [(UNREACHABLE, 3), (UNHEALTHY, 1)])
def test_wait_reports_last_result_at_deadline(last: HealthReport, code: int) -> None:
    fake = FakeTime()
    report = wait_until_healthy(lambda: last, 1.2, 0.5, fake.clock, fake.sleep)
    assert report.exit_code == code
    assert fake.sleeps == pytest.approx([0.5, 0.5, 0.2])


def test_no_wait_probes_once() -> None:
    fake = FakeTime()
    assert wait_until_healthy(lambda: UNHEALTHY, 0, 0.5, fake.clock, fake.sleep) is UNHEALTHY
    assert fake.sleeps == []


# --- key file ----------------------------------------------------------------------------------


def test_load_keys(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    path.write_text(
        json.dumps(
            {
                "management": {"key": "abc", "expiration time": "2025-01-01T01:00:00Z"},
                "inference": {"key": "def", "expiration time": "2025-01-01T01:00:00Z"},
                "API": {"key": "ghi"},
            }
        )
    )
    keys = load_keys(path)
    assert (keys.inference, keys.management) == ("def", "abc")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (None, "cannot read key file"),
        ("{", "not valid JSON"),
        ('{"inference": {"key": "def"}}', "'management.key'"),
    ],
)
def test_bad_key_file_names_it(tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "key_file.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=needle) as caught:
        load_keys(path)
    assert str(path) in str(caught.value)


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--inference-url", "ftp://127.0.0.1:8080"], "scheme 'ftp'"),
        (["--management-url", "http://"], "no host"),
        (["--inference-url", "localhost:8080"], "did you mean 'http://localhost:8080'"),
        (["--wait", "-1"], "--wait"),
        (["--timeout", "0"], "--timeout"),
        (["--bogus"], "unrecognized arguments"),
        (["--model", ""], "must not be empty"),
        (["--model", "../iris"], "not a model name TorchServe accepts"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert needle in captured.err
    assert captured.out == ""


def test_missing_key_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "key_file.json"
    assert main(["--key-file", str(missing)]) == EXIT_USAGE
    assert str(missing) in capsys.readouterr().err


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as users run it: a fresh interpreter, no install, no proxy in the way."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "pythonpath")
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    done = run_script(
        "--inference-url", url, "--management-url", url, "--timeout", "2", cwd=tmp_path
    )
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    assert "cannot reach" in done.stderr and url in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_unreachable_server_json_and_short_wait(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    done = run_script(
        "--inference-url", url, "--management-url", url, "--wait", "0.6", "--json", cwd=tmp_path
    )
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    result = json.loads(done.stdout)
    assert (result["healthy"], result["exit_code"], result["ping"]) == (False, 3, None)
    assert "Traceback" not in done.stderr


# --- probe modes and queue saturation ----------------------------------------------------------


def full_queue_entry() -> dict[str, object]:
    document = entry("READY", min_workers=1)
    document["jobQueueStatus"] = {"remainingCapacity": 0, "pendingRequests": 4}
    return document


def test_a_full_queue_is_reported_without_calling_the_model_down() -> None:
    model = evaluate_model(full_queue_entry())
    assert model.healthy is True
    assert model.reason == ("1/1 workers READY, job queue full (4 pending): new requests get 503")


@pytest.mark.parametrize(
    ("mode", "healthy"), [("default", True), ("startup", True), ("readiness", False)]
)
def test_only_readiness_fails_on_a_full_queue(mode: str, healthy: bool) -> None:
    assert evaluate_model(full_queue_entry(), mode=mode).healthy is healthy


def test_liveness_follows_ping_only() -> None:
    down_model = (evaluate_model(entry("UNLOADING", "UNLOADING")),)
    assert HealthReport(HEALTHY_PING, down_model, mode="liveness").exit_code == 0
    failed_for_good = PingResult(500, "Unhealthy")
    assert HealthReport(failed_for_good, (), mode="liveness").exit_code == EXIT_UNHEALTHY
    assert HealthReport(None, (), error="x", unreachable=True, mode="liveness").exit_code == 3


def test_probe_flag_is_validated() -> None:
    assert main(["--probe", "sometimes"]) == 2


def test_project_logs_it_cannot_look_into_are_skipped_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(path: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "is_dir", denied)  # tests may run as root: chmod is no test
    url = f"http://127.0.0.1:{free_loopback_port()}"
    assert main(["--inference-url", url, "--management-url", url, "--timeout", "1"]) == 3
    assert "Traceback" not in capsys.readouterr().err

"""``servekit bench`` and ``servekit profile`` end to end: each starts its own TorchServe with
iris from the project (given with --project, run from another directory), drives it, writes
JSON (and a PNG). Smoke only: fields are checked for sense, never for speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def servekit(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "servekit.cli", name, "--project", str(ROOT), *args]


def test_bench_iris_writes_results_and_plot(model_store: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "iris.json", tmp_path / "iris.png"
    command = servekit("bench", "--model", "iris",
               "--concurrency", "2", "--duration", "2", "--warmup", "0.5",
               "--out", str(out), "--plot", str(plot))  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "c=2" in done.stdout
    assert done.stderr.count("\r") == 0  # no progress line when stderr is not a terminal

    document = json.loads(out.read_text())
    assert document["command"].startswith(f"servekit bench --project {ROOT} --model iris")
    assert document["machine"]["cpus"] == os.cpu_count()
    assert document["machine"]["versions"]["torchserve"]
    assert document["server"]["kind"] == "torchserve"
    assert document["server"]["model"]["modelName"] == "iris"
    (run,) = document["runs"]
    assert run["concurrency"] == 2 and run["mode"] == "closed"
    assert run["requests"] > 0 and run["ok"] == run["requests"]
    assert run["errors"] == 0 and run["count_503"] == 0
    assert run["max_in_flight"] <= 2
    latency = run["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert run["throughput_rps"] > 0 and run["client_cpu_s"] >= 0
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_bench_serves_the_model_with_the_batch_settings_asked_for(
    model_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "iris.json"
    command = servekit("bench", "--model", "iris",
               "--batch-size", "3", "--max-batch-delay", "7", "--workers", "2",
               "--concurrency", "6", "--duration", "2", "--warmup", "0.5",
               "--out", str(out))  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    server = json.loads(out.read_text())["server"]
    model = server["model"]
    assert (model["batchSize"], model["maxBatchDelay"], model["workers"]) == (3, 7, 2)
    assert (model["minWorkers"], model["maxWorkers"]) == (2, 2)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert server["worker_environment"]["OMP_NUM_THREADS"] == threads
    (run,) = json.loads(out.read_text())["runs"]
    assert run["ok"] == run["requests"] > 0


def test_bench_refuses_a_bad_batch_setting_before_starting_anything(tmp_path: Path) -> None:
    command = servekit("bench", "--model", "iris", "--batch-size", "0")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2  # bad input, refused before a server starts
    assert "batch_size is 0; it must be an integer >= 1" in done.stderr
    command = servekit("bench", "--url", "http://127.0.0.1:9/x", "--model", "iris",
                       "--workers", "2")  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "need --model and no --url" in done.stderr


def test_profile_splits_cpu_by_process_and_worker_time_by_stage(
    model_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "profile.json"
    command = servekit("profile", "--model", "iris",
               "--batch-size", "4", "-c", "8", "--duration", "3", "--warmup", "1",
               "--out", str(out))  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["setting"] == {"batch_size": 4, "max_batch_delay": 10, "workers": 1}
    assert document["command"].startswith("servekit profile --project")
    assert document["machine"]["cpus"] == os.cpu_count()
    assert document["load"]["goodput_rps"] > 0 and document["load"]["errors"] == 0
    cpu = document["cpu_ms_per_request"]
    assert cpu["frontend (Java)"] > 0 and cpu["workers (Python)"] > 0
    shares = document["worker_wall_time_share"]
    assert document["worker_samples"] > 100  # 3 s at 100 Hz, idle included
    assert abs(sum(shares.values()) - 1.0) < 0.01
    assert shares.get("forward", 0) > 0  # iris's Linear layers are torch/nn/modules frames
    assert "worker wall time by stage" in done.stdout


def test_a_torchserve_that_fails_at_start_is_reported_with_its_reason(
    model_store: Path, tmp_path: Path
) -> None:
    """The server's temp dir is gone when the message is read: the reason must be in it."""
    config = tmp_path / "small-heap.properties"
    config.write_text(
        f"model_store={model_store}\nvmargs=-Xmx1k\n"  # the JVM refuses to start
    )
    command = servekit("bench", "--model", "empty_model", "--config", str(config),
                       "--duration", "2", "--warmup", "0.5")  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "TorchServe exited" in done.stderr
    assert done.stderr.count("Too small maximum heap") == 1  # the log's tail, once
    assert "Traceback" not in done.stderr

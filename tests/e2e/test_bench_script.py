"""scripts/bench.py end to end: it starts its own TorchServe with iris, drives it, writes
JSON and PNG. Smoke only: fields are checked for sense, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_iris_writes_results_and_plot(model_store: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "iris.json", tmp_path / "iris.png"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", "iris",
               "--concurrency", "2", "--duration", "2", "--warmup", "0.5",
               "--out", str(out), "--plot", str(plot)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "c=2" in done.stdout
    assert done.stderr.count("\r") == 0  # no progress line when stderr is not a terminal

    document = json.loads(out.read_text())
    assert document["command"].startswith("python scripts/bench.py --model iris")
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

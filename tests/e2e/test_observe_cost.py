"""``servekit bench-observe`` end to end, small: iris, one round, a second per run. Two real
TorchServes (log and prometheus mode), the exporter and a real Prometheus (Debian's); the
results file is checked for sense and for Prometheus's count, never for speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="`make prometheus` first"),
]


def test_bench_observe_measures_both_configurations(model_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "observe.json"
    command = [sys.executable, "-m", "servekit.cli", "bench-observe", "--project", str(ROOT),
               "--model", "iris", "--rounds", "1", "-c", "2", "--duration", "1",
               "--warmup", "0.3", "--server-warmup", "0", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "round 1 A" in done.stdout and "round 1 B" in done.stdout
    assert "B/A throughput" in done.stdout and f"wrote {out}" in done.stdout

    document = json.loads(out.read_text())
    assert document["command"].startswith(f"servekit bench-observe --project {ROOT}")
    assert document["machine"]["cpus"] == os.cpu_count()
    assert document["design"]["order"] == ["A1", "B1"]
    assert document["configurations"]["B"]["scrape_jobs"] == ["torchserve", "servekit-exporter"]
    for k in ("A", "B"):
        assert document["servers"][k]["modelName"] == "iris"
        assert document["servers"][k]["workers"] >= 1
    runs = {r["configuration"]: r for r in document["runs"]}
    assert sorted(runs) == ["A", "B"]
    for r in runs.values():
        assert r["round"] == 1 and r["concurrency"] == 2
        assert r["requests"] > 0 and r["errors"] == 0
        assert r["goodput_rps"] > 0 and 0 < r["p50_ms"] <= r["p95_ms"]
    (summary,) = document["summary"]
    assert summary["concurrency"] == 2
    assert summary["b_over_a"]["throughput"]["of_medians"] > 0
    assert summary["b_over_a"]["p95"]["of_medians"] > 0
    (check,) = document["prometheus_check"]["turns"]
    assert check["client_answered"] > 0 and check["client_no_answer"] == 0
    assert check["prometheus_delta"] == check["client_answered"]
    assert document["prometheus_check"]["exact"] is True

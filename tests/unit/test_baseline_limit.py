"""servekit.bench.baselines.limit: the in-process batched throughput, on a short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servekit.bench.baselines.limit import measure, request_batches
from servekit.bench.payloads import SENTENCES
from servekit.errors import ConfigError
from servekit.serve.harness import LocalModel

MAR = Path(__file__).resolve().parent.parent.parent / "model_store" / "minilm.mar"


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_batches_cycle_the_benchmark_sentences(batch_size: int) -> None:
    batches = request_batches(batch_size)
    first = [next(batches) for _ in range(len(SENTENCES))]
    assert all(len(batch) == batch_size for batch in first)
    bodies = [request.parameters[0][2] for batch in first for request in batch]
    assert bodies[: len(SENTENCES)] == [f'"{s}"'.encode() for s in SENTENCES]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        request_batches(0)


@pytest.mark.skipif(not MAR.is_file(), reason="model_store/minilm.mar not built (make archive)")
def test_measure_counts_whole_batches() -> None:
    with LocalModel.from_mar(MAR) as model:
        result = measure(model, batch_size=4, duration=0.2, warmup_batches=1)
    assert result.batches >= 1
    assert result.items == result.batches * 4
    assert result.items_per_s > 0
    assert result.threads >= 1
    assert 0 < result.batch_ms_p50 <= result.seconds * 1000 + 0.001  # p50 rounded to 1 µs
    assert result.to_dict()["items_per_s"] == round(result.items_per_s, 2)


def test_processes_run_at_once_with_the_cores_shared_and_are_summed() -> None:
    if not MAR.exists():
        pytest.skip("model_store/minilm.mar missing: run make archive")
    from servekit.bench.baselines.limit import in_processes

    result = in_processes(MAR, batch_size=2, duration=0.3, processes=2)
    assert result["processes"] == 2 and len(result["each"]) == 2
    assert result["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert all(each["threads"] == result["threads"] for each in result["each"])
    total = sum(each["items_per_s"] for each in result["each"])
    assert result["items_per_s"] == pytest.approx(total, abs=0.01)


def test_threads_asked_for_win_over_the_archives_torch_threads(tmp_path: Path) -> None:
    """One process with a thread per core: the archived handler sets its own torch_threads
    (minilm's spec: one, for two workers) when it loads; --threads must still hold."""
    if not MAR.exists():
        pytest.skip("model_store/minilm.mar missing: run make archive")
    threads = (os.cpu_count() or 1) + 1  # not what any spec sets
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "servekit.cli",
            "limit",
            "--mar",
            str(MAR),
            "--batch-size",
            "1",
            "--duration",
            "0.2",
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["threads"] == threads

"""``servekit compare`` end to end: TorchServe on each backend, the in-process limits and the
peers, on the repository's project given with --project from another directory; the figures
are checked for sense, never for speed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from servekit.serve.settings import archived_setting
from tests.e2e.conftest import ROOT
from tests.e2e.test_tune import PNG_MAGIC, servekit


def test_compare_runs_every_system_with_the_same_client(model_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    command = servekit("compare", "--concurrency", "8",
                       "--batch-size", "4", "--duration", "3", "--warmup", "1",
                       "--out", str(out))  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    document = json.loads(out.read_text())
    systems = document["systems"]
    backends = ["torchserve", "torchserve-onnxruntime", "torchserve-onnxruntime-int8"]
    served = [*backends, "torchserve-bs1-w1", "torchserve-bs1-w2", "starlette", "litserve"]
    limits = ["limit-threads", "limit-processes"]
    derived = ["limit", "torchserve-bs1", "torchserve-best-backend"]
    assert set(systems) == {*limits, *derived, *served}
    for name in served:
        figures = systems[name]
        assert figures["concurrency"] == 8 and figures["mode"] == "closed", name
        assert figures["ok"] == figures["requests"] > 0, name
        assert figures["errors"] == 0, name
    cpus = os.cpu_count() or 1
    for name, processes in zip(limits, [1, cpus], strict=True):
        assert systems[name]["batch_size"] == 4 and systems[name]["goodput_rps"] > 0, name
        assert systems[name]["processes"] == processes, name
        assert systems[name]["threads"] * processes == cpus, name
    assert systems["limit"]["chosen"] in limits
    assert systems["limit"]["goodput_rps"] == max(systems[n]["goodput_rps"] for n in limits)
    assert document["machine"]["versions"]["litserve"] and document["machine"]["cpus"]
    shipped = archived_setting(ROOT, "minilm")  # what is not given comes from the spec
    assert (
        document["workers"] == shipped.workers and document["delay_ms"] == shipped.max_batch_delay
    )
    for name in backends:
        assert systems[name]["setting"] == {
            "batch_size": 4,
            "max_batch_delay": shipped.max_batch_delay,
            "workers": shipped.workers,
        }, name
    assert [s["backend"] for s in systems.values() if "backend" in s][:3] == [
        "eager",
        "onnxruntime",
        "onnxruntime-int8",
    ]
    rows = document["backends"]
    assert [r["system"] for r in rows] == backends
    limit = systems["limit"]["goodput_rps"]
    for row in rows:
        assert row["goodput_rps"] == systems[row["system"]]["goodput_rps"]
        assert row["ratio_to_eager_limit"] == round(row["goodput_rps"] / limit, 3)
    assert systems["torchserve-best-backend"]["chosen"] in backends[1:]
    assert systems["torchserve-bs1-w2"]["torch_threads_per_worker"] * 2 <= max(
        2, systems["torchserve-bs1-w1"]["torch_threads_per_worker"]
    )
    bs1 = systems["torchserve-bs1"]
    assert bs1["chosen"] in ("torchserve-bs1-w1", "torchserve-bs1-w2")
    assert bs1["goodput_rps"] == max(systems[k]["goodput_rps"] for k in bs1["best_of"])
    assert [t["target"] for t in document["targets"]] == [
        "served / in-process limit",
        "served / TorchServe batchSize 1",
        "served / seed-001 Starlette server",
        "served / LitServe",
        "best gated backend served / eager in-process limit",
    ]
    table = out.with_suffix(".md").read_text()
    assert "| torchserve |" in table and "| served / LitServe |" in table
    assert "| onnxruntime-int8 |" in table
    assert out.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)

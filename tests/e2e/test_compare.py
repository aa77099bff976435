"""``servekit compare`` end to end: TorchServe, the in-process limit and the peers, on the
repository's project given with --project from another directory; the figures are checked
for sense, never for speed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
    served = ["torchserve", "torchserve-bs1-w1", "torchserve-bs1-w2", "starlette", "litserve"]
    assert set(systems) == {"limit", "torchserve-bs1", *served}
    for name in served:
        figures = systems[name]
        assert figures["concurrency"] == 8 and figures["mode"] == "closed", name
        assert figures["ok"] == figures["requests"] > 0, name
        assert figures["errors"] == 0, name
    assert systems["limit"]["batch_size"] == 4 and systems["limit"]["goodput_rps"] > 0
    assert systems["limit"]["processes"] == 1 and document["workers"] == 1
    assert document["machine"]["versions"]["litserve"] and document["machine"]["cpus"]
    assert systems["torchserve"]["setting"] == {
        "batch_size": 4,
        "max_batch_delay": 10,
        "workers": 1,
    }
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
    ]
    table = out.with_suffix(".md").read_text()
    assert "| torchserve |" in table and "| served / LitServe |" in table
    assert out.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)

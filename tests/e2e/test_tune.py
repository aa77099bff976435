"""``servekit tune`` end to end on real TorchServe servers, on the repository's project given
with --project from another directory (``servekit compare``: tests/e2e/test_compare.py, a file
of its own so that the two longest tests run side by side under ``make test``).

Iris keeps the tuner's runs short; the figures are checked for sense and for what they
claim (every setting tried, the winner written into the spec), never for speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servekit.config.specs import load_spec

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.e2e
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = ["--batch-sizes", "1,8", "--delays", "2,20", "--workers", "1,2"]
SHORT = ["--max-concurrency", "8", "--level-seconds", "0.8", "--warmup", "0.2",
         "--setup-warmup", "0.3", "--server-warmup", "0.5"]  # fmt: skip


def servekit(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "servekit.cli", name, "--project", str(ROOT), *args]


def tune(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*servekit("tune"), "--model", "iris",
               "--spec", str(tmp_path / "iris.yml"), "--out", str(tmp_path / "tune.json"),
               *SPACE, *SHORT, *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "iris.yml"
    shutil.copy(ROOT / "config" / "iris.yml", path)
    return path


def test_tune_climbs_runs_the_grid_and_writes_the_winner(
    model_store: Path, tmp_path: Path, spec: Path
) -> None:
    done = tune(tmp_path, "--p95", "1000", "--grid", "--judge-rounds", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    document = json.loads((tmp_path / "tune.json").read_text())
    assert (tmp_path / "tune.png").read_bytes().startswith(PNG_MAGIC)
    assert document["command"].startswith(f"servekit tune --project {ROOT} --model iris")
    assert document["machine"]["cpus"] == os.cpu_count()

    space = {(b, d, w) for b in (1, 8) for d in (2, 20) for w in (1, 2)}
    grid = [tuple(t["setting"].values()) for t in document["grid"]["trials"]]
    assert sorted(grid) == sorted(space)  # every setting once
    climb = [tuple(t["setting"].values()) for t in document["climb"]["trials"]]
    first = [s for s, t in zip(climb, document["climb"]["trials"], strict=True) if not t["retrial"]]
    assert len(set(first)) == len(first) and set(climb) <= space  # again only as a retrial
    assert len(climb) - len(first) == 2  # the two best measured once more
    for trial in document["climb"]["trials"] + document["grid"]["trials"]:
        levels = [lv["concurrency"] for lv in trial["levels"]]
        assert levels == sorted(levels) and set(levels) <= {1, 2, 3, 4, 6, 8}
        assert all(lv["errors"] == 0 and lv["count_503"] == 0 for lv in trial["levels"])
        assert trial["score_rps"] > 0  # a 1 s objective: iris meets it everywhere

    comparison = document["comparison"]
    best = document["climb"]["best"]
    assert comparison["climb_best"] == best["label"]
    assert comparison["grid_best_rps"] == max(t["score_rps"] for t in document["grid"]["trials"])
    assert comparison["trials"] == [len(climb), len(grid)]
    assert comparison["time_ratio_climb_to_grid"] == pytest.approx(
        document["climb"]["seconds"] / document["grid"]["seconds"], abs=0.002
    )
    judged = comparison["head_to_head"]  # both winners again, alternating, two runs each
    picks = [comparison["climb_best"], comparison["grid_best"]]
    runs = [t["label"] for t in judged["trials"]]
    assert runs == (picks + picks[::-1] if picks[0] != picks[1] else picks)
    means = [
        sum(t["score_rps"] for t in judged["trials"] if t["label"] == pick) / runs.count(pick)
        for pick in picks
    ]
    assert [judged["climb_best_rps"], judged["grid_best_rps"]] == pytest.approx(means, abs=0.01)
    assert judged["ratio_climb_to_grid"] == pytest.approx(means[0] / means[1], abs=0.001)
    assert "side by side, 2 runs each" in done.stdout

    written = load_spec(spec, ROOT).model_config
    b, d, w = best["setting"].values()
    assert (written["batchSize"], written["maxBatchDelay"]) == (b, d)
    assert written["minWorkers"] == written["maxWorkers"] == w
    assert "wrote {'model_config'" in done.stdout
    assert "tuned " in spec.read_text()  # the note says where the values came from
    threads = load_spec(spec, ROOT).handler_options.get("torch_threads")
    assert threads == (max(1, (os.cpu_count() or 1) // w) if w > 1 else 0)  # 0: torch's own


def test_tune_with_an_objective_nothing_meets_writes_nothing(
    model_store: Path, tmp_path: Path, spec: Path
) -> None:
    before = spec.read_text()
    done = tune(tmp_path, "--p95", "0.001", "--workers", "1", "--batch-sizes", "8")
    assert done.returncode == 1
    assert "no setting met p95 <= 0.001 ms; nothing written" in done.stderr
    assert spec.read_text() == before
    document = json.loads((tmp_path / "tune.json").read_text())
    assert document["climb"]["best"]["score_rps"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "8,x"], "'8,x': expected integers separated by commas"),
        (["--delays", "20,5"], "delays [20, 5]: give distinct values, ascending"),
        (["--p95", "-1"], "p95 objective is -1.0 ms; give a positive number"),
        (["--judge-rounds", "-1"], "--judge-rounds is -1; give 0 or more"),
    ],
)
def test_tune_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    command = servekit("tune", "--model", "iris", *args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr

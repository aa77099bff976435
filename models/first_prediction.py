"""How long from ``servekit init`` to the first correct prediction of one's own model, per kind
and weights format, on this machine (install excluded; the weights exist before the clock
starts, as a user's do).

    python -m models.first_prediction --out docs/bench/first-prediction.json   # make bench-first

For each model of ``models/own_formats.py``, in a fresh directory: ``servekit init``,
``servekit new-model``, ``servekit archive`` (what ``make serve`` runs before starting), a
TorchServe on the project's config (free loopback ports instead of 8080-8082), until its
workers are READY, then held-out requests until the first one answered right. Each step is
timed; the commands run as a user runs them (the installed ``servekit``, in the project).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from models.own_formats import OwnModel, all_models
from servekit.bench.machine import machine
from servekit.serve.server import running

SERVEKIT = str(Path(sys.executable).parent / "servekit")


def timed_command(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([SERVEKIT, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"servekit {args[0]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def first_right_answer(url: str, model: OwnModel) -> tuple[float, int]:
    """Seconds until a held-out case is answered right, and how many were asked."""
    started = time.perf_counter()
    for asked, (body, content_type, right) in enumerate(model.cases, start=1):
        reply = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)
        if reply.ok and right(reply.json()):
            return time.perf_counter() - started, asked
    raise RuntimeError(f"{model.name}: no held-out case was answered right")


def measure(model: OwnModel, base: Path) -> dict[str, Any]:
    project = base / "project"
    steps = {"init": timed_command(["init", str(project)], base)}
    steps["new-model"] = timed_command(
        ["new-model", model.name, "--kind", model.kind, *model.args], project
    )
    steps["archive"] = timed_command(["archive"], project)
    started = time.perf_counter()
    with running(project / "config.properties", base / "ts") as server:
        server.management().wait_ready(model.name, timeout=300)
        steps["serve until READY"] = time.perf_counter() - started
        url = f"{server.inference_url}/predictions/{model.name}"
        steps["first right answer"], asked = first_right_answer(url, model)
    return {
        "model": model.name,
        "kind": model.kind,
        "weights": Path(model.args[model.args.index("--weights") + 1]).name,
        "seconds": {k: round(v, 2) for k, v in steps.items()},
        "total_seconds": round(sum(steps.values()), 2),
        "cases_asked": asked,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="first-"))  # short: the worker socket's path is capped
    results = []
    try:
        weights = base / "weights"
        weights.mkdir()
        for model in all_models(weights, digits=20):
            run_dir = base / model.name
            run_dir.mkdir()
            result = measure(model, run_dir)
            results.append(result)
            steps = ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items())
            total = result["total_seconds"]
            print(f"{model.kind:<16} {result['weights']:<18} {total:6.1f} s  ({steps})", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.out:
        document = {"machine": machine(), "results": results}
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

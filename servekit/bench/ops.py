"""Measure the operations figures: 503 latency, init-failure detection, recovery, recycling.

    servekit bench-ops            # or: make bench-ops; writes docs/bench/ops.json

Builds the archives of this repository's demo models ``slow_model``, ``leaky_model``,
``empty_model`` and ``failing_model`` (as ``servekit archive`` does), then starts its own
TorchServe servers (free ports, own TMPDIR) from the project's config.properties, serving them.
A project without their specs (config/<model>.yml) is refused up front (exit 2): these
figures are of the toolkit itself, measured in a clone of its repository.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from servekit.bench import command
from servekit.bench.machine import machine
from servekit.bench.stats import percentile
from servekit.cli import OK
from servekit.config.specs import load_spec, read_yaml
from servekit.errors import ConfigError
from servekit.health.probe import Target, probe
from servekit.health.recycle import Limits, Recycler
from servekit.project import Project
from servekit.runtime.stats import stats_dir
from servekit.serve.archive import build
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.server import TorchServe, running


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def latency(ordered: list[float]) -> dict[str, float] | None:
    """p50 and max in ms of ascending seconds; ``None`` when there are none."""
    return {"p50": ms(percentile(ordered, 50)), "max": ms(ordered[-1])} if ordered else None


def queue_overflow(server: TorchServe, burst: int = 30) -> dict[str, Any]:
    def send(i: int) -> tuple[int, float]:
        started = time.monotonic()
        response = requests.post(
            f"{server.inference_url}/predictions/slow_model", json={"value": i}, timeout=60
        )
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(send, range(burst)))
    rejected = sorted(t for code, t in results if code == 503)
    accepted = sorted(t for code, t in results if code == 200)
    started = time.monotonic()
    requests.post(f"{server.inference_url}/predictions/slow_model", json={"value": 1}, timeout=60)
    return {
        "burst": burst,
        "accepted": len(accepted),
        "rejected_503": len(rejected),
        "other": burst - len(accepted) - len(rejected),
        "503_latency_ms": latency(rejected),
        "accepted_latency_ms": latency(accepted),
        "after_burst_single_request_ms": ms(time.monotonic() - started),
        "model_delay_ms": 200,
    }


def killed_worker_recovery(server: TorchServe) -> dict[str, Any]:
    victim = server.management().entry("leaky_model")["workers"][0]["pid"]
    target = Target(server.inference_url, server.management_url)
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    degraded_at = None
    while True:
        report = probe(target, ("leaky_model",))
        if degraded_at is None and "degraded" in report.models[0].reason:
            degraded_at = time.monotonic()
        if degraded_at is not None and report.exit_code == 0:
            return {
                "detected_degraded_ms": ms(degraded_at - killed),
                "recovered_ms": ms(time.monotonic() - killed),
            }
        time.sleep(0.02)


def recycling(server: TorchServe) -> dict[str, Any]:
    for _ in range(10):
        requests.post(f"{server.inference_url}/predictions/leaky_model", data=b"x", timeout=30)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(
                requests.post(
                    f"{server.inference_url}/predictions/leaky_model", data=b"x", timeout=30
                ).status_code
            )

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        recycler = Recycler(
            server.management_url, "leaky_model", stats_dir("leaky_model", server.tmpdir)
        )
        done = recycler.run(Limits(max_memory_mb=1))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {
        "workers_recycled": len(done),
        "seconds_each": [d.seconds for d in done],
        "requests_during": len(statuses),
        "failed_during": sum(1 for code in statuses if code != 200),
    }


def init_failure(config: Path, workdir: Path) -> dict[str, Any]:
    with running(config, workdir, models=["empty_model", "failing_model"]) as server:
        target = Target(server.inference_url, server.management_url)
        up = time.monotonic()
        ours = None
        while True:
            report = probe(target, ("failing_model",))
            now = time.monotonic()
            if ours is None and report.exit_code == 1:
                ours = now - up
            if report.ping is not None and report.ping.status_code == 500:
                return {
                    "our_unhealthy_s": round(ours or 0.0, 2),
                    "ping_500_s": round(now - up, 2),
                    "maxRetryTimeoutInSec": 10,
                    "measured_from": "frontend answering /ping",
                }
            time.sleep(0.05)


DEMO_MODELS = ("slow_model", "leaky_model", "empty_model", "failing_model")


def check_demo_models(project: Project) -> None:
    """``ConfigError`` unless ``project`` has the specs of every demo model measured here."""
    missing = [project.spec(m) for m in DEMO_MODELS if not project.spec(m).is_file()]
    if missing:
        raise ConfigError(
            f"bench-ops measures the toolkit's own demo models ({', '.join(DEMO_MODELS)}); "
            f"the project {project.root} has no {', '.join(p.name for p in missing)} in "
            f"{project.specs_dir}: run it in a clone of the toolkit's repository"
        )


def measure(project: Project, command_line: str) -> dict[str, Any]:
    defaults = read_yaml(project.model_config)
    for model in DEMO_MODELS:
        build(
            load_spec(project.spec(model), project.root),
            defaults,
            project.root,
            project.model_store,
        )
    results: dict[str, Any] = {"command": command_line, "machine": machine()}
    config = project.properties
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        models = ["slow_model", "leaky_model"]
        with running(config, Path(tmp) / "ops", models=models) as server:
            api = server.management()
            api.wait_ready("leaky_model", workers=2, timeout=300)
            api.wait_ready("slow_model", timeout=300)
            time.sleep(2)  # slow_model's background warmup
            results["queue_overflow"] = queue_overflow(server)
            results["killed_worker"] = killed_worker_recovery(server)
            results["recycling"] = recycling(server)
        results["init_failure"] = init_failure(config, Path(tmp) / "failing")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = command.parser("bench-ops", __doc__)
    parser.add_argument(
        "--out", type=Path, help="results JSON (default: the project's docs/bench/ops.json)"
    )
    args = parser.parse_args(argv)
    project = command.project_of(args)
    check_demo_models(project)
    exit_on_sigterm()  # a TERM stops the servers started here, as Ctrl-C does
    out: Path = args.out or project.root / "docs" / "bench" / "ops.json"
    results = measure(project, command.line("bench-ops", argv))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return OK

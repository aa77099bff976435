"""Measure the operations figures: 503 latency, init-failure detection, recovery, recycling.

    python scripts/bench_ops.py            # or: make bench-ops; writes docs/bench/ops.json

Starts its own TorchServe servers (free ports, own TMPDIR) from config.properties.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.config.specs import load_specs, read_yaml  # noqa: E402
from servekit.health.check import Target, probe  # noqa: E402
from servekit.health.recycle import Limits, Recycler  # noqa: E402
from servekit.runtime.stats import stats_dir  # noqa: E402
from servekit.serve.archive import build  # noqa: E402
from servekit.serve.server import TorchServe, running  # noqa: E402

OUT = ROOT / "docs" / "bench" / "ops.json"
CONFIG = ROOT / "config.properties"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def describe(server: TorchServe, model: str) -> dict[str, Any]:
    entry: dict[str, Any] = requests.get(
        f"{server.management_url}/models/{model}", timeout=10
    ).json()[0]
    return entry


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
        "503_latency_ms": {"p50": ms(statistics.median(rejected)), "max": ms(rejected[-1])}
        if rejected
        else None,
        "accepted_latency_ms": {"p50": ms(statistics.median(accepted)), "max": ms(accepted[-1])},
        "after_burst_single_request_ms": ms(time.monotonic() - started),
        "model_delay_ms": 200,
    }


def killed_worker_recovery(server: TorchServe) -> dict[str, Any]:
    victim = describe(server, "leaky_model")["workers"][0]["pid"]
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


def init_failure(workdir: Path) -> dict[str, Any]:
    with running(CONFIG, workdir, models=["empty_model", "failing_model"]) as server:
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


def main() -> int:
    defaults = read_yaml(ROOT / "model-config.yml")
    for spec in load_specs(ROOT / "config", ROOT):
        build(spec, defaults, ROOT, ROOT / "model_store")
    results: dict[str, Any] = {
        "command": "python scripts/bench_ops.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        with running(CONFIG, Path(tmp) / "ops", models=["slow_model", "leaky_model"]) as server:
            Recycler(server.management_url, "leaky_model", Path(tmp))._wait(
                lambda e: sum(w["status"] == "READY" for w in e["workers"]) == 2, "READY"
            )
            time.sleep(2)  # slow_model's background warmup
            results["queue_overflow"] = queue_overflow(server)
            results["killed_worker"] = killed_worker_recovery(server)
            results["recycling"] = recycling(server)
        results["init_failure"] = init_failure(Path(tmp) / "failing")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

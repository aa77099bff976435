"""Benchmark: iris through the queue bridge vs direct HTTP, same requests, same concurrency.

    servekit bench-bridge                        # 2000 requests, concurrency 16
    servekit bench-bridge -n 5000 -c 32 --bridges 2 --write docs/bench/bridge.json

Builds the project's iris archive if needed, starts its own TorchServe (iris only), RabbitMQ
and Redis on free loopback ports, and the bridges as separate processes (``servekit bridge``),
like a deployment would. Each of
``concurrency`` closed-loop clients sends a request and waits for its answer before the next:
over HTTP with ``requests``, or with ``QueueClient.submit`` + ``result`` (publish, bridge, HTTP,
Redis, BLPOP). Prints throughput and p50/p95/p99 end-to-end latency for both paths (the
percentiles of ``servekit.bench.stats``, as every benchmark's) and writes them, with the command
and the machine, to ``--write``. Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from servekit.bench import command
from servekit.bench.machine import machine
from servekit.bench.stats import summarize
from servekit.cli import OK
from servekit.config.specs import load_specs, read_yaml
from servekit.errors import ToolkitError
from servekit.project import Project
from servekit.queue.brokers import RabbitMQ, Redis, brokers
from servekit.queue.client import QueueClient
from servekit.serve.archive import build
from servekit.serve.server import TorchServe, running

PAYLOAD = {"features": [6.7, 3.0, 5.2, 2.3]}
QUEUE, PREFIX = "bench", "bench"


@dataclass(frozen=True)
class Figures:
    path: str
    requests: int
    concurrency: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int


def closed_loop(
    path: str, total: int, concurrency: int, make_call: Callable[[], Callable[[], bool]]
) -> Figures:
    """``concurrency`` threads share ``total`` calls; each thread gets its own call (client)."""
    latencies: list[float] = []
    errors = [0]
    lock, counter = threading.Lock(), iter(range(total))
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        call = make_call()
        barrier.wait()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            start = time.perf_counter()
            ok = call()
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    ms = summarize(latencies)
    return Figures(path, total, concurrency, round(seconds, 3), round(total / seconds, 1),
                   round(ms.p50, 2), round(ms.p95, 2), round(ms.p99, 2), round(ms.max, 2),
                   errors[0])  # fmt: skip


def direct_call(ts: TorchServe) -> Callable[[], Callable[[], bool]]:
    def make() -> Callable[[], bool]:
        session, url = requests.Session(), f"{ts.inference_url}/predictions/iris"

        def call() -> bool:
            return session.post(url, json=PAYLOAD, timeout=60).status_code == 200

        return call

    return make


def bridge_call(
    rabbit: RabbitMQ, red: Redis, clients: list[QueueClient]
) -> Callable[[], Callable[[], bool]]:
    def make() -> Callable[[], bool]:
        client = QueueClient(rabbit.url, red.url, QUEUE, PREFIX)
        clients.append(client)

        def call() -> bool:
            return client.result(client.submit("iris", PAYLOAD), timeout=120).ok

        return call

    return make


@contextlib.contextmanager
def bridge_processes(
    count: int, prefetch: int, rabbit: RabbitMQ, red: Redis, ts: TorchServe, logs: Path
) -> Iterator[None]:
    processes = []
    try:
        for i in range(count):
            bridge = [
                sys.executable, "-m", "servekit.cli", "bridge",
                "--amqp-url", rabbit.url, "--redis-url", red.url, "--inference-url",
                ts.inference_url, "--queue", QUEUE, "--prefix", PREFIX,
                "--prefetch", str(prefetch), "--name", f"bench-{i}",
            ]  # fmt: skip
            with open(logs / f"bridge-{i}.log", "ab") as log:
                processes.append(subprocess.Popen(bridge, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))  # fmt: skip
        yield
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(60)


def model_settings(ts: TorchServe) -> dict[str, object]:
    """Until iris's workers are READY; its settings in force, as TorchServe describes them."""
    entry = ts.management().wait_ready("iris", timeout=180)
    keys = ("modelName", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    return {key: entry.get(key) for key in keys} | {"workers": len(entry.get("workers", []))}


def build_iris(project: Project) -> Path:
    """The project's iris archive, built (or left as it is when up to date)."""
    defaults = read_yaml(project.model_config)
    for spec in load_specs(project.specs_dir, project.root):
        if spec.name == "iris":
            build(spec, defaults, project.root, project.model_store)
            return project.archive("iris")
    raise ToolkitError(f"no spec of iris in {project.specs_dir}: the bridge benchmark serves iris")


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    project: Project = args.project
    build_iris(project)
    info = machine()
    with (
        brokers(work / "brokers") as (rabbit, red),
        running(
            project.properties, work / "ts", model_store=project.model_store, models=["iris"]
        ) as ts,
    ):
        model = model_settings(ts)
        warm = max(50, args.requests // 10)
        closed_loop("warmup", warm, args.concurrency, direct_call(ts))
        direct = closed_loop("direct_http", args.requests, args.concurrency, direct_call(ts))
        print(render(direct), flush=True)
        clients: list[QueueClient] = []
        with bridge_processes(args.bridges, args.prefetch, rabbit, red, ts, work):
            try:
                closed_loop("warmup", warm, args.concurrency, bridge_call(rabbit, red, clients))
                bridged = closed_loop("bridge", args.requests, args.concurrency,
                                      bridge_call(rabbit, red, clients))  # fmt: skip
            finally:
                for client in clients:
                    client.close()
        print(render(bridged), flush=True)
    return {
        "command": args.command,
        "model": model,
        "bridges": args.bridges,
        "prefetch_per_bridge": args.prefetch,
        "machine": info,
        "results": [asdict(direct), asdict(bridged)],
        "bridge_over_direct": {
            "throughput_ratio": round(bridged.throughput_rps / direct.throughput_rps, 3),
            "p50_added_ms": round(bridged.p50_ms - direct.p50_ms, 2),
            "p95_added_ms": round(bridged.p95_ms - direct.p95_ms, 2),
        },
    }


def render(f: Figures) -> str:
    return (f"{f.path:12} {f.requests} requests at concurrency {f.concurrency}: "
            f"{f.throughput_rps} req/s, p50 {f.p50_ms} ms, p95 {f.p95_ms} ms, "
            f"p99 {f.p99_ms} ms, max {f.max_ms} ms, errors {f.errors}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = command.parser("bench-bridge", __doc__)
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--bridges", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=16, help="per bridge (16)")
    parser.add_argument("--write", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.bridges, args.prefetch) < 1:
        parser.error("--requests, --concurrency, --bridges and --prefetch must be >= 1")
    args.project = command.project_of(args)
    args.command = command.line("bench-bridge", argv)
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as work:
        report = run(args, Path(work))
    print(json.dumps(report["bridge_over_direct"]))
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.write}")
    return OK

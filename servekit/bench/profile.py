"""Where the time goes when TorchServe serves a model under load: CPU per process, py-spy per stage.

    servekit profile                       # minilm, batch 16, concurrency 64
    servekit profile --batch-size 1 -c 1 --out docs/bench/profile-bs1.json
    servekit profile --backend onnxruntime-int8 --out docs/bench/profile-minilm-int8.json

Starts a private TorchServe from the project (as ``servekit bench`` does), drives the model
with the same client at a fixed concurrency and meanwhile:

* counts the CPU seconds of the Java frontend, of each Python worker and of the client, per
  request served (psutil), so the frontend's share is visible next to the worker's;
* samples the worker with py-spy (``--idle``, 100 Hz, non-blocking) and sorts every sample by
  the stage its stack is in: waiting for a batch, IPC (TorchServe's wire codec), decoding,
  tokenization, forward, pooling, encoding, metrics, other.

Writes JSON (and prints a table). Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from servekit.bench import command, loadgen
from servekit.bench import payloads as bench_payloads
from servekit.bench.backend_archives import archive_for, spec_backend
from servekit.bench.machine import machine
from servekit.cli import OK
from servekit.errors import ConfigError, ServerError, ToolkitError
from servekit.runtime.backend_names import BACKENDS
from servekit.serve.management import Management
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.server import TorchServe
from servekit.serve.settings import Setting, batch_server, registered

# (stage, substrings of a collapsed stack): the first stage whose pattern occurs wins, so the
# more specific ones come first. Frames read "function (path:line)".
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tokenization", ("tokenizers", "tokenization_utils", "_token_ids")),
    ("forward", ("modeling_bert", "torch/nn/modules", "onnxruntime")),
    ("pooling, normalizing", ("_embed (", "inference (")),
    ("encoding", ("create_predict_response", "json/encoder", "postprocess (", "_reply (")),
    ("decoding", ("_payload (", "parse_request (", "json/decoder", "select_payload")),
    ("batching (pad, sort)", ("preprocess (", "text_batching")),
    ("metrics", ("_emit_metrics", "ts/metrics", "publish (")),
    ("waiting for a batch", ("retrieve_msg", "_retrieve_buffer", "recv_into", "recv (")),
    ("IPC send", ("sendall", "send (")),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("profile", __doc__)
    parser.add_argument("--model", default="minilm")
    command.add_payload_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="serve the model on this backend (default: the one its spec asks for; another is "
        "archived as servekit archive would, gate included)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="profiled seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--config", type=Path, help="config.properties to serve with (default: the project's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (default: the project's docs/bench/profile-MODEL.json)",
    )
    args = parser.parse_args(argv)
    try:
        args.setting = Setting(args.batch_size, args.max_batch_delay, args.workers)
    except ToolkitError as err:
        parser.error(str(err))
    if args.concurrency < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--concurrency and --duration must be >= 1, --warmup >= 0")
    args.project = command.project_of(args)
    args.config = args.config or args.project.properties
    args.out = args.out or args.project.root / "docs" / "bench" / f"profile-{args.model}.json"
    args.command = command.line("profile", argv)
    return args


def stage_of(stack: str) -> str:
    for stage, patterns in STAGES:
        if any(p in stack for p in patterns):
            return stage
    return "other"


def read_collapsed(path: Path) -> collections.Counter[str]:
    """py-spy's raw output: ``frame;frame;... count`` per line, summed by stage."""
    stages: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stages[stage_of(stack)] += int(count)
    return stages


def processes(ts: TorchServe, model: str) -> tuple[psutil.Process, list[psutil.Process]]:
    """The Java frontend and ``model``'s worker processes."""
    if ts.process is None:
        raise ServerError("TorchServe is not running")
    tree = psutil.Process(ts.process.pid).children(recursive=True)
    java = next((p for p in tree if p.name().startswith("java")), None)
    if java is None:
        raise ServerError("no Java frontend found under the torchserve process")
    entry = ts.management().entry(model)
    return java, [psutil.Process(int(w["pid"])) for w in Management.ready_workers(entry)]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def py_spy() -> str:
    """The py-spy executable: on PATH or next to this interpreter (a venv not activated)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise ConfigError(
            "py-spy is not installed: pip install 'torchserve-kit[bench]' (or pip install py-spy)"
        )
    return found


def profile(args: argparse.Namespace) -> dict[str, Any]:
    spy = py_spy()
    command.archive_of(args.project, args.model)
    backend = args.backend or spec_backend(args.project, args.model)
    archive = archive_for(args.project, args.model, backend)
    payload = bench_payloads.choose(args.model, args.payload, args.content_type)
    info = machine()
    with (
        tempfile.TemporaryDirectory(prefix="profile-") as workdir,
        batch_server(args.config, Path(workdir), args.setting.workers, archive.store) as ts,
        registered(ts, archive.name, args.setting) as url,
    ):
        java, workers = processes(ts, archive.name)
        target = loadgen.Target.post(url, payload.bodies, payload.content_type)
        load = loadgen.Load(
            concurrency=args.concurrency, duration=args.warmup + args.duration, warmup=args.warmup
        )
        outcome: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: outcome.update(result=loadgen.run(target, load)))
        runner.start()
        runner.join(args.warmup)  # profile the measured part only
        before = {p.pid: cpu_seconds(p) for p in (java, *workers)}
        raw = Path(workdir) / "worker.txt"
        record = [spy, "record", "--pid", str(workers[0].pid), "--duration",
                  str(int(args.duration)), "--rate", "100", "--format", "raw", "--idle",
                  "--nonblocking", "--output", str(raw)]  # fmt: skip
        done = subprocess.run(record, capture_output=True, text=True, timeout=args.duration + 60)
        after = {p.pid: cpu_seconds(p) for p in (java, *workers)}
        runner.join()
        if done.returncode != 0 or not raw.exists():
            raise ToolkitError(f"py-spy failed ({done.returncode}): {done.stderr[-1500:]}")
        stages = read_collapsed(raw)
    result: loadgen.LoadResult = outcome["result"]
    served = result.goodput_rps * args.duration
    total = sum(stages.values()) or 1
    frontend = after[java.pid] - before[java.pid]
    worker_cpu = sum(after[p.pid] - before[p.pid] for p in workers)
    return {
        "command": args.command,
        "model": args.model,
        "backend": backend,
        "setting": args.setting.to_dict(),
        "concurrency": args.concurrency,
        "profiled_seconds": args.duration,
        "machine": info,
        "cpus": os.cpu_count(),
        "load": {
            "goodput_rps": round(result.goodput_rps, 1),
            "p50_ms": round(result.latency_ms.p50, 1),
            "p95_ms": round(result.latency_ms.p95, 1),
            "errors": result.errors,
        },
        "cpu_ms_per_request": {
            "frontend (Java)": round(1000 * frontend / served, 2),
            "workers (Python)": round(1000 * worker_cpu / served, 2),
            "client": round(1000 * result.client_cpu_s / max(result.ok, 1), 2),
        },
        "cpu_share_of_machine": {
            "frontend (Java)": round(frontend / args.duration / (os.cpu_count() or 1), 3),
            "workers (Python)": round(worker_cpu / args.duration / (os.cpu_count() or 1), 3),
        },
        "worker_wall_time_share": {
            stage: round(count / total, 3) for stage, count in stages.most_common()
        },
        "worker_samples": total,
    }


def table(document: dict[str, Any]) -> str:
    lines = [
        f"{document['model']} {Setting(**document['setting']).label} at concurrency "
        f"{document['concurrency']}: {document['load']['goodput_rps']} req/s, "
        f"p95 {document['load']['p95_ms']} ms",
        "CPU ms per request: "
        + ", ".join(f"{k} {v}" for k, v in document["cpu_ms_per_request"].items()),
        "worker wall time by stage (py-spy, idle included):",
    ]
    lines += [
        f"  {stage:<24} {share:6.1%}" for stage, share in document["worker_wall_time_share"].items()
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    document = profile(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(table(document))
    print(f"wrote {args.out}")
    return OK

"""MiniLM on TorchServe against the in-process limit and the peers, in turn, with the same client.

    servekit compare                      # what `make bench` runs
    servekit compare --concurrency 64 --batch-size 16 --duration 20

Systems, each alone on the machine in turn, each serving the project's model_store/minilm.mar
with the same handler code and torch threads (one per core, shared out between workers):

  limit              the handler's batched forward in process, no server (bench.baselines.limit);
                     with W workers, W such processes at once, cores / W threads each
  torchserve         TorchServe, batchSize B, maxBatchDelay D, W workers (cores / W threads)
  torchserve-bs1-wN  TorchServe, batchSize 1, N workers (1 and 2; the best is the baseline)
  starlette          the seed-001 design: one asyncio queue, one deadline, max batch B (one
                     process by design: all cores' threads in it)
  litserve           LitServe with its own batching, max batch B, timeout D, W workers

The same closed-loop client (servekit.bench.loadgen) drives each at concurrency C. Writes the
figures as JSON, a Markdown table and a PNG (default: the project's docs/bench/compare-minilm.*),
with the ratios the performance targets are stated in. Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from servekit.bench import command, loadgen
from servekit.bench import payloads as bench_payloads
from servekit.bench.baselines.runner import running_baseline
from servekit.bench.machine import machine
from servekit.cli import OK
from servekit.errors import ToolkitError
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.settings import Setting, batch_server, registered, threads_per_worker

MODEL = "minilm"
TARGETS = (  # (name, numerator, denominator, at least) as the issue states them
    ("served / in-process limit", "torchserve", "limit", 0.85),
    ("served / TorchServe batchSize 1", "torchserve", "torchserve-bs1", 3.0),
    ("served / seed-001 Starlette server", "torchserve", "starlette", 1.2),
    ("served / LitServe", "torchserve", "litserve", 1.0),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("compare", __doc__)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="B for every batching system")
    parser.add_argument("--delay", type=int, default=10, help="D: batch deadline, ms (10)")
    parser.add_argument("--workers", type=int, default=1, help="W: TorchServe and LitServe (1)")
    parser.add_argument("--duration", type=float, default=20.0, help="s per system, warmup incl.")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument(
        "--only", action="append", help="run only these systems (repeatable; default all)"
    )
    parser.add_argument(
        "--config", type=Path, help="config.properties to serve with (default: the project's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (default: the project's docs/bench/compare-minilm.json)",
    )
    args = parser.parse_args(argv)
    if args.duration <= args.warmup or args.warmup < 0:
        parser.error("--duration must be longer than --warmup (>= 0)")
    try:
        Setting(args.batch_size, args.delay, args.workers)
    except ToolkitError as err:
        parser.error(str(err))
    if args.concurrency < 1:
        parser.error(f"--concurrency is {args.concurrency}; it must be >= 1")
    known = list(systems(args))
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; known: {', '.join(known)}")
    args.project = command.project_of(args)
    args.config = args.config or args.project.properties
    args.out = args.out or args.project.root / "docs" / "bench" / "compare-minilm.json"
    args.command = command.line("compare", argv)
    return args


def load(args: argparse.Namespace) -> loadgen.Load:
    return loadgen.Load(
        concurrency=args.concurrency, duration=args.duration, warmup=args.warmup, timeout=120
    )


def drive(url: str, args: argparse.Namespace) -> dict[str, Any]:
    payload = bench_payloads.minilm()
    target = loadgen.Target.post(url, payload.bodies, payload.content_type)
    result = loadgen.run(target, load(args))
    return {"kind": "served", **result.to_dict()}


def limit(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The in-process limit in a fresh interpreter (as a worker would be), no server."""
    limit_argv = [sys.executable, "-m", "servekit.cli", "limit", "--mar", str(mar(args))]
    limit_argv += ["--batch-size", str(args.batch_size), "--duration", str(args.duration)]
    limit_argv += ["--processes", str(args.workers)]
    done = subprocess.run(limit_argv, cwd=workdir, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ToolkitError(f"limit failed ({done.returncode}):\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {"kind": "in-process", "processes": args.workers, **figures} | {
        "goodput_rps": figures["items_per_s"]
    }


def torchserve(setting: Setting) -> Callable[[argparse.Namespace, Path], dict[str, Any]]:
    def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
        with (
            batch_server(args.config, workdir, setting.workers) as ts,
            registered(ts, MODEL, setting) as url,
        ):
            figures = drive(url, args)
        threads = threads_per_worker(setting.workers)
        return figures | {"setting": setting.to_dict(), "torch_threads_per_worker": threads}

    return run


def baseline(kind: str, flags: Callable[[argparse.Namespace], list[str]]) -> Any:
    def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
        with running_baseline(kind, mar(args), workdir, args=flags(args)) as server:
            return drive(server.predict_url, args) | {"flags": flags(args)}

    return run


def systems(args: argparse.Namespace) -> dict[str, Callable[[argparse.Namespace, Path], Any]]:
    b, d, w = str(args.batch_size), str(args.delay), str(args.workers)
    threads = str(threads_per_worker(args.workers))
    lit = ["--max-batch-size", b, "--batch-timeout-ms", d, "--workers", w, "--threads", threads]
    return {
        "limit": limit,
        "torchserve": torchserve(Setting(args.batch_size, args.delay, args.workers)),
        "torchserve-bs1-w1": torchserve(Setting(1, args.delay, 1)),
        "torchserve-bs1-w2": torchserve(Setting(1, args.delay, 2)),
        "starlette": baseline("starlette", lambda a: ["--max-batch-size", b, "--max-delay-ms", d]),
        "litserve": baseline("litserve", lambda a: lit),
    }


def mar(args: argparse.Namespace) -> Path:
    return command.archive_of(args.project, MODEL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = systems(args)
    mar(args)  # before any system runs
    info = machine()
    results: dict[str, Any] = {}
    for name, measure in chosen.items():
        if args.only and name not in args.only:
            continue
        print(f"{name}: running ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"compare-{name}-") as workdir:
            results[name] = measure(args, Path(workdir))
        print(f"{name}: {line(results[name])}", flush=True)
    bs1 = [k for k in results if k.startswith("torchserve-bs1-")]
    if bs1:
        best = max(bs1, key=lambda k: results[k]["goodput_rps"])
        results["torchserve-bs1"] = {**results[best], "best_of": bs1, "chosen": best}
    return {
        "command": args.command,
        "date": datetime.date.today().isoformat(),
        "model": MODEL,
        "payload": bench_payloads.minilm().description,
        "client": "servekit.bench.loadgen (one asyncio loop, aiohttp, keep-alive), closed loop",
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "delay_ms": args.delay,
        "workers": args.workers,
        "seconds_per_system": args.duration,
        "warmup_s": args.warmup,
        "machine": info,
        "systems": results,
        "targets": targets(results),
    }


def line(figures: dict[str, Any]) -> str:
    if figures["kind"] == "in-process":
        return f"{figures['goodput_rps']:.1f} items/s (batch {figures['batch_size']})"
    lat = figures["latency_ms"]
    return (
        f"{figures['goodput_rps']:.1f} req/s  p50 {lat['p50']:.0f}  p95 {lat['p95']:.0f}  "
        f"p99 {lat['p99']:.0f} ms  errors {figures['errors']}  503 {figures['count_503']}  "
        f"client CPU {figures['client_cpu_pct']:.0f}%"
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for name, top, bottom, wanted in TARGETS:
        if top not in results or bottom not in results:
            continue
        a, b = results[top], results[bottom]
        ratio = a["goodput_rps"] / b["goodput_rps"] if b["goodput_rps"] else 0.0
        p95_ok = b["kind"] == "in-process" or (a["latency_ms"]["p95"] <= b["latency_ms"]["p95"])
        found.append(
            {
                "target": name,
                "ratio": round(ratio, 3),
                "wanted": wanted,
                "p95_equal_or_lower": p95_ok,
                "met": ratio >= wanted and p95_ok,
            }
        )
    return found


def markdown(document: dict[str, Any]) -> str:
    rows = [
        f"MiniLM (all-MiniLM-L6-v2), {document['payload']}; closed loop at concurrency "
        f"{document['concurrency']}, {document['seconds_per_system']:g} s per system "
        f"({document['warmup_s']:g} s warmup left out), batch size {document['batch_size']}, "
        f"deadline {document['delay_ms']} ms, {document['workers']} worker(s) for TorchServe, "
        f"LitServe and the limit; {document['machine']['cpus']} cores; "
        f"{document['date']}.",
        "",
        f"Command: `{document['command']}`",
        "",
        "| system | req/s | p50 ms | p95 ms | p99 ms | errors | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in document["systems"].items():
        if name == "torchserve-bs1":
            continue
        if f["kind"] == "in-process":
            label = f"{name} (batch {f['batch_size']}, {f['processes']} process(es))"
            rows.append(f"| {label} | {f['goodput_rps']:.1f} | | | | | |")
            continue
        lat = f["latency_ms"]
        rows.append(
            f"| {name} | {f['goodput_rps']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
            f"{lat['p99']:.0f} | {f['errors']} | {f['client_cpu_pct']:.0f}% |"
        )
    rows += [
        "",
        "| target | ratio | wanted | p95 equal or lower | met |",
        "|---|---:|---:|---|---|",
    ]
    for t in document["targets"]:
        rows.append(
            f"| {t['target']} | {t['ratio']:.2f}x | >= {t['wanted']:g}x | "
            f"{'yes' if t['p95_equal_or_lower'] else 'no'} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(rows) + "\n"


def plot(document: dict[str, Any], path: Path) -> None:
    names = [n for n in document["systems"] if n not in ("limit", "torchserve-bs1")]
    figures = [document["systems"][n] for n in names]
    fig = Figure(figsize=(10, 4.5))
    left, right = fig.subplots(1, 2)
    left.bar(names, [f["goodput_rps"] for f in figures], color="tab:blue")
    if "limit" in document["systems"]:
        top = document["systems"]["limit"]["goodput_rps"]
        left.axhline(top, color="black", linestyle="--", label=f"in-process limit {top:.0f}/s")
        left.legend(loc="lower right", fontsize=8)
    left.set(ylabel="req/s (2xx)", title="throughput")
    for name in ("p50", "p95", "p99"):
        right.plot(names, [f["latency_ms"][name] for f in figures], "o-", label=name)
    right.set(ylabel="latency ms (2xx)", title="latency")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(
        f"minilm at concurrency {document['concurrency']}, batch {document['batch_size']}, "
        f"{document['machine']['cpus']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    document = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    table = args.out.with_suffix(".md")
    table.write_text(markdown(document))
    plot(document, args.out.with_suffix(".png"))
    print(markdown(document))
    print(f"wrote {args.out}, {table} and {args.out.with_suffix('.png')}")
    return OK

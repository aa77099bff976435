"""A model on TorchServe against the in-process limit and the peers, in turn, with the same client.

    servekit compare                      # what `make bench` runs: the spec's batch settings
    servekit compare --concurrency 64 --batch-size 16 --duration 20
    servekit compare --only limit-threads --only limit-processes --only torchserve-onnxruntime-int8
    servekit compare --model efficientnet  # its limits and backends (the peers serve MiniLM)

Systems, each alone on the machine in turn, each serving the project's model_store/MODEL.mar
(minilm unless ``--model``) with the same handler code and torch threads (one per core, shared
out between workers); B, D and W default to what the spec archives (config/MODEL.yml):

  limit-threads      the handler's batched forward in process, no server (bench.baselines.limit),
                     eager, batch B: one process with a thread per core
  limit-processes    the same, one one-thread process per core at once, summed; the better of
                     the two is ``limit``, the eager in-process limit at batch B
  torchserve         TorchServe, batchSize B, maxBatchDelay D, W workers (cores / W threads)
  torchserve-BACKEND the same on another backend of the model (onnxruntime, onnxruntime-int8):
                     its archive built as servekit archive builds it, accuracy gate included
                     (servekit.bench.backend_archives); the best of them is
                     ``torchserve-best-backend``. A backend the gate refuses is a row
                     saying so, with the gate's figures, not a failed run
  torchserve-bs1-wN  TorchServe, batchSize 1, N workers (1 and 2; the best is the baseline)
  starlette          the seed-001 design: one asyncio queue, one deadline, max batch B (one
                     process by design: all cores' threads in it); MiniLM only
  litserve           LitServe with its own batching, max batch B, timeout D, W workers; MiniLM
                     only

The same closed-loop client (servekit.bench.loadgen) drives each at concurrency C with the
model's built-in payload (servekit.bench.payloads). Writes the figures as JSON, a Markdown table
and a PNG (default: the project's docs/bench/compare-MODEL.*), with the ratios the performance
targets are stated in. Figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from servekit.bench import command, loadgen
from servekit.bench import payloads as bench_payloads
from servekit.bench.backend_archives import archive_for, private_copy
from servekit.bench.baselines.runner import running_baseline
from servekit.bench.machine import machine
from servekit.cli import OK
from servekit.errors import ConfigError, ToolkitError
from servekit.health.cli import model_name
from servekit.runtime.backend_names import BACKENDS, EAGER
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.settings import (
    Setting,
    archived_setting,
    batch_server,
    registered,
    threads_per_worker,
)

MODEL = "minilm"  # the default; the peers serve only this one
PEERS = ("starlette", "litserve")
TITLES = {"minilm": "MiniLM (all-MiniLM-L6-v2)", "efficientnet": "EfficientNet-Lite0"}
OTHER_BACKENDS = tuple(b for b in BACKENDS if b != EAGER)
BEST_BACKEND = "torchserve-best-backend"
BACKEND_TARGETS = {"minilm": 1.25, "efficientnet": 1.5}  # best gated backend / eager limit
TARGETS = (  # (name, numerator, denominator, at least, p95 no worse than) as the issues state them
    ("served / in-process limit", "torchserve", "limit", 0.85, None),
    ("served / TorchServe batchSize 1", "torchserve", "torchserve-bs1", 3.0, "torchserve-bs1"),
    ("served / seed-001 Starlette server", "torchserve", "starlette", 1.2, "starlette"),
    ("served / LitServe", "torchserve", "litserve", 1.0, "litserve"),
)
BACKEND_TARGET = "best gated backend served / eager in-process limit"
# the kind of a backend's row when the gate refused it or its handler offers none
NOT_SERVED = "not served"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("compare", __doc__)
    parser.add_argument(
        "--model",
        type=model_name,
        default=MODEL,
        help="the project's model_store/MODEL.mar (default: minilm)",
    )
    command.add_payload_arguments(parser)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument(
        "--batch-size", type=int, help="B for every batching system (default: the spec's)"
    )
    parser.add_argument("--delay", type=int, help="D: batch deadline, ms (default: the spec's)")
    parser.add_argument(
        "--workers", type=int, help="W: TorchServe and LitServe (default: the spec's)"
    )
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
        help="results JSON (default: the project's docs/bench/compare-MODEL.json)",
    )
    args = parser.parse_args(argv)
    if args.duration <= args.warmup or args.warmup < 0:
        parser.error("--duration must be longer than --warmup (>= 0)")
    if args.concurrency < 1:
        parser.error(f"--concurrency is {args.concurrency}; it must be >= 1")
    known = system_names()
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; known: {', '.join(known)}")
    peers = sorted(set(args.only or ()) & set(PEERS))
    if args.model != MODEL and peers:
        parser.error(f"{', '.join(peers)} serve(s) only {MODEL}, not {args.model}")
    try:
        args.bodies = bench_payloads.choose(args.model, args.payload, args.content_type)
    except ToolkitError as err:
        parser.error(str(err))
    args.project = command.project_of(args)
    command.archive_of(args.project, args.model)  # before its spec is read for batch settings
    try:
        args.setting = batch_setting(args)
    except ToolkitError as err:
        parser.error(str(err))
    args.batch_size, args.delay, args.workers = (
        args.setting.batch_size,
        args.setting.max_batch_delay,
        args.setting.workers,
    )
    args.config = args.config or args.project.properties
    args.out = args.out or args.project.root / "docs" / "bench" / f"compare-{args.model}.json"
    args.command = command.line("compare", argv)
    return args


def batch_setting(args: argparse.Namespace) -> Setting:
    """``--batch-size``, ``--delay`` and ``--workers``; those not given, as the spec archives
    them (what the shipped archive serves with)."""
    given = (args.batch_size, args.delay, args.workers)
    if None not in given:
        return Setting(*given)
    archived = archived_setting(args.project.root, args.model)
    return Setting(
        archived.batch_size if args.batch_size is None else args.batch_size,
        archived.max_batch_delay if args.delay is None else args.delay,
        archived.workers if args.workers is None else args.workers,
    )


def load(args: argparse.Namespace) -> loadgen.Load:
    return loadgen.Load(
        concurrency=args.concurrency, duration=args.duration, warmup=args.warmup, timeout=120
    )


def drive(url: str, args: argparse.Namespace) -> dict[str, Any]:
    payload = args.bodies
    target = loadgen.Target.post(url, payload.bodies, payload.content_type)
    result = loadgen.run(target, load(args))
    return {"kind": "served", **result.to_dict()}


def limit(processes: int) -> Callable[[argparse.Namespace, Path], dict[str, Any]]:
    """The eager in-process limit in ``processes`` fresh interpreters at once (as workers would
    be), cores / processes threads each, no server."""

    def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
        count = processes or cpus()
        limit_argv = [sys.executable, "-m", "servekit.cli", "limit", "--mar", str(mar(args))]
        limit_argv += ["--batch-size", str(args.batch_size), "--duration", str(args.duration)]
        limit_argv += ["--payload", str(args.payload)] if args.payload else []
        limit_argv += ["--content-type", args.content_type] if args.content_type else []
        if count > 1:
            limit_argv += ["--processes", str(count)]
        else:
            limit_argv += ["--threads", str(cpus())]
        done = subprocess.run(limit_argv, cwd=workdir, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ToolkitError(f"limit failed ({done.returncode}):\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return {"kind": "in-process", "processes": count, **figures} | {
            "goodput_rps": figures["items_per_s"]
        }

    return run


def cpus() -> int:
    return os.cpu_count() or 1


def torchserve(
    setting: Setting, backend: str = EAGER
) -> Callable[[argparse.Namespace, Path], dict[str, Any]]:
    def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
        from servekit.serve.backends import GateRefused  # torch: only when a system runs

        try:
            archive = archive_for(args.project, args.model, backend)
        except (GateRefused, ConfigError) as err:  # a row that says why, not a failed run
            if backend == EAGER:
                raise
            why = (
                f"refused by the accuracy gate: {err}"
                if isinstance(err, GateRefused)
                else f"not offered: {err}"
            )
            return {"kind": NOT_SERVED, "backend": backend, "reason": why}
        served = private_copy(archive, workdir / "store")
        with (
            batch_server(args.config, workdir, setting.workers, served.store) as ts,
            registered(ts, served.name, setting) as url,
        ):
            figures = drive(url, args)
        threads = threads_per_worker(setting.workers)
        return figures | {
            "backend": backend,
            "setting": setting.to_dict(),
            "torch_threads_per_worker": threads,
        }

    return run


def baseline(kind: str, flags: Callable[[argparse.Namespace], list[str]]) -> Any:
    def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
        with running_baseline(kind, mar(args), workdir, args=flags(args)) as server:
            return drive(server.predict_url, args) | {"flags": flags(args)}

    return run


def backend_system(backend: str) -> str:
    """The system that serves ``backend`` (``torchserve`` for eager)."""
    return "torchserve" if backend == EAGER else f"torchserve-{backend}"


def system_names() -> list[str]:
    """Every system compare can run, in the order it runs them."""
    return [
        "limit-threads",
        "limit-processes",
        *(backend_system(b) for b in BACKENDS),
        "torchserve-bs1-w1",
        "torchserve-bs1-w2",
        "starlette",
        "litserve",
    ]


def systems(args: argparse.Namespace) -> dict[str, Callable[[argparse.Namespace, Path], Any]]:
    b, d, w = str(args.batch_size), str(args.delay), str(args.workers)
    threads = str(threads_per_worker(args.workers))
    lit = ["--max-batch-size", b, "--batch-timeout-ms", d, "--workers", w, "--threads", threads]
    setting = Setting(args.batch_size, args.delay, args.workers)
    found: dict[str, Callable[[argparse.Namespace, Path], Any]] = {
        "limit-threads": limit(1),
        "limit-processes": limit(0),  # one a core
    }
    found |= {backend_system(backend): torchserve(setting, backend) for backend in BACKENDS}
    found |= {
        "torchserve-bs1-w1": torchserve(Setting(1, args.delay, 1)),
        "torchserve-bs1-w2": torchserve(Setting(1, args.delay, 2)),
        "starlette": baseline("starlette", lambda a: ["--max-batch-size", b, "--max-delay-ms", d]),
        "litserve": baseline("litserve", lambda a: lit),
    }
    assert list(found) == system_names()
    return found


def mar(args: argparse.Namespace) -> Path:
    return command.archive_of(args.project, args.model)


def chosen_names(args: argparse.Namespace) -> list[str]:
    """The systems this run measures: ``--only``'s, else all (the peers only for MiniLM)."""
    if args.only:
        return [n for n in system_names() if n in args.only]
    return [n for n in system_names() if args.model == MODEL or n not in PEERS]


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = systems(args)
    mar(args)  # before any system runs
    info = machine()
    results: dict[str, Any] = {}
    wanted = chosen_names(args)
    for name, measure in chosen.items():
        if name not in wanted:
            continue
        print(f"{name}: running ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"compare-{name}-") as workdir:
            results[name] = measure(args, Path(workdir))
        print(f"{name}: {line(results[name])}", flush=True)
    best_of(results, "limit", ["limit-threads", "limit-processes"])
    best_of(results, "torchserve-bs1", ["torchserve-bs1-w1", "torchserve-bs1-w2"])
    best_of(results, BEST_BACKEND, [backend_system(b) for b in OTHER_BACKENDS])
    return {
        "command": args.command,
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "payload": args.bodies.description,
        "client": "servekit.bench.loadgen (one asyncio loop, aiohttp, keep-alive), closed loop",
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "delay_ms": args.delay,
        "workers": args.workers,
        "seconds_per_system": args.duration,
        "warmup_s": args.warmup,
        "machine": info,
        "systems": results,
        "backends": backend_rows(results),
        "targets": targets(results, args.model),
    }


DERIVED = ("limit", "torchserve-bs1", BEST_BACKEND)
"""The systems that are the best of others (``best_of``), not measured themselves."""


def best_of(results: dict[str, Any], name: str, among: Sequence[str]) -> None:
    """Add ``name``: the one of ``among`` measured here with the most goodput (none: nothing;
    a backend not served, refused by the gate or not offered, is not measured)."""
    measured = [k for k in among if k in results and "goodput_rps" in results[k]]
    if measured:
        best = max(measured, key=lambda k: results[k]["goodput_rps"])
        results[name] = {**results[best], "best_of": measured, "chosen": best}


def backend_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per backend served here: its throughput and p95 at the same batch settings as
    eager, against the eager in-process limit and eager served, measured in the same run."""
    limit_rps = results["limit"]["goodput_rps"] if "limit" in results else None
    eager = results.get(backend_system(EAGER))
    rows = []
    for backend in BACKENDS:
        served = results.get(backend_system(backend))
        if served is None:
            continue
        if served["kind"] == NOT_SERVED:
            rows.append(
                {
                    "backend": backend,
                    "system": backend_system(backend),
                    "not_served": served["reason"],
                }
            )
            continue
        rps, p95 = served["goodput_rps"], served["latency_ms"]["p95"]
        rows.append(
            {
                "backend": backend,
                "system": backend_system(backend),
                "goodput_rps": rps,
                "p95_ms": p95,
                "ratio_to_eager_limit": round(rps / limit_rps, 3) if limit_rps else None,
                "ratio_to_eager_served": (
                    round(rps / eager["goodput_rps"], 3) if eager and eager["goodput_rps"] else None
                ),
                "p95_no_worse_than_eager_served": (
                    p95 <= eager["latency_ms"]["p95"] if eager else None
                ),
            }
        )
    return rows


def line(figures: dict[str, Any]) -> str:
    if figures["kind"] == NOT_SERVED:
        return str(figures["reason"])
    if figures["kind"] == "in-process":
        return (
            f"{figures['goodput_rps']:.1f} items/s (batch {figures['batch_size']}, "
            f"{figures['processes']} process(es))"
        )
    lat = figures["latency_ms"]
    return (
        f"{figures['goodput_rps']:.1f} req/s  p50 {lat['p50']:.0f}  p95 {lat['p95']:.0f}  "
        f"p99 {lat['p99']:.0f} ms  errors {figures['errors']}  503 {figures['count_503']}  "
        f"client CPU {figures['client_cpu_pct']:.0f}%"
    )


def targets(results: dict[str, Any], model: str = MODEL) -> list[dict[str, Any]]:
    stated = list(TARGETS)
    if model in BACKEND_TARGETS:
        stated.append((BACKEND_TARGET, BEST_BACKEND, "limit", BACKEND_TARGETS[model], "torchserve"))
    found = []
    for name, top, bottom, wanted, p95_of in stated:
        if top not in results or bottom not in results:
            continue
        a, b = results[top], results[bottom]
        ratio = a["goodput_rps"] / b["goodput_rps"] if b["goodput_rps"] else 0.0
        p95_ok = p95_of is None or (
            p95_of in results and a["latency_ms"]["p95"] <= results[p95_of]["latency_ms"]["p95"]
        )
        found.append(
            {
                "target": name,
                "systems": [a.get("chosen", top), b.get("chosen", bottom)],
                "ratio": round(ratio, 3),
                "wanted": wanted,
                "p95_equal_or_lower": p95_ok,
                "met": ratio >= wanted and p95_ok,
            }
        )
    return found


def markdown(document: dict[str, Any]) -> str:
    title = TITLES.get(document["model"], document["model"])
    served_by = "TorchServe, LitServe" if document["model"] == MODEL else "TorchServe"
    rows = [
        f"{title}, {document['payload']}; closed loop at concurrency "
        f"{document['concurrency']}, {document['seconds_per_system']:g} s per system "
        f"({document['warmup_s']:g} s warmup left out), batch size {document['batch_size']}, "
        f"deadline {document['delay_ms']} ms, {document['workers']} worker(s) for {served_by} "
        f"and the limit; {document['machine']['cpus']} cores; "
        f"{document['date']}.",
        "",
        f"Command: `{document['command']}`",
        "",
        "| system | req/s | p50 ms | p95 ms | p99 ms | errors | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in document["systems"].items():
        if name in DERIVED:
            continue
        if f["kind"] == NOT_SERVED:
            rows.append(f"| {name} (not served: see below) | | | | | | |")
            continue
        if f["kind"] == "in-process":
            label = (
                f"{name} (batch {f['batch_size']}, {f['processes']} process(es) x "
                f"{f['threads']} thread(s))"
            )
            rows.append(f"| {label} | {f['goodput_rps']:.1f} | | | | | |")
            continue
        lat = f["latency_ms"]
        rows.append(
            f"| {name} | {f['goodput_rps']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
            f"{lat['p99']:.0f} | {f['errors']} | {f['client_cpu_pct']:.0f}% |"
        )
    if document.get("backends"):
        rows += [
            "",
            "| backend | req/s | p95 ms | / eager in-process limit | / eager served "
            "| p95 no worse than eager served |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in document["backends"]:
            if "not_served" in r:
                rows.append(f"| {r['backend']} | {r['not_served']} | | | | |")
                continue
            rows.append(
                f"| {r['backend']} | {r['goodput_rps']:.1f} | {r['p95_ms']:.0f} | "
                f"{_ratio(r['ratio_to_eager_limit'])} | {_ratio(r['ratio_to_eager_served'])} | "
                f"{_yes(r['p95_no_worse_than_eager_served'])} |"
            )
    rows += [
        "",
        "| target | ratio | wanted | p95 equal or lower | met |",
        "|---|---:|---:|---|---|",
    ]
    for t in document["targets"]:
        rows.append(
            f"| {t['target']} | {t['ratio']:.3f}x | >= {t['wanted']:g}x | "
            f"{'yes' if t['p95_equal_or_lower'] else 'no'} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(rows) + "\n"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _yes(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def plot(document: dict[str, Any], path: Path) -> None:
    names = [
        n for n, f in document["systems"].items() if n not in DERIVED and f["kind"] == "served"
    ]
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
        f"{document['model']} at concurrency {document['concurrency']}, "
        f"batch {document['batch_size']}, "
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

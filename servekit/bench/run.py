"""Load-test a served model: throughput, p50/p95/p99 latency, errors and 503s, client CPU.

    servekit bench --model minilm --concurrency 1 --concurrency 8 --duration 10 \\
        --out docs/bench/minilm-torchserve.json --plot docs/bench/minilm-torchserve.png
    servekit bench --url http://127.0.0.1:8080/predictions/iris --model iris --rate 50
    servekit bench --url http://127.0.0.1:9000/embed --payload body.json -c 4

Without ``--url`` it starts an isolated TorchServe from the project's config.properties with
only ``--model`` loaded (own ports and temp dir), waits until its workers are READY (through
the management API), runs, and stops it.
``--concurrency`` (repeatable: a sweep) keeps N requests in flight; ``--rate`` sends R req/s
on a fixed schedule. The client is ``servekit.bench.loadgen`` (one asyncio loop, aiohttp,
keep-alive) for every server compared; its own CPU use is reported, since on 2 cores it
competes with the server. Figures, not a test: nothing is asserted.
Exit 0 after a run with some 2xx answers, even with errors among them; 1 when a run got no
2xx answer at all (a 404 for an unknown model, every request a 5xx) or no request finished
after the warmup; 2 for bad arguments, a missing project or archive; 3 when the server gave
no answer at all (not running, wrong port).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import socket
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from servekit.bench import command, loadgen
from servekit.bench import payloads as bench_payloads
from servekit.bench.machine import machine
from servekit.bench.plot import plot_histogram, plot_sweep
from servekit.cli import OK
from servekit.errors import ConfigError, ToolkitError, Unreachable
from servekit.project import Project
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.server import running
from servekit.serve.settings import Setting, archived_setting, batch_server, registered

READY_TIMEOUT = 300.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("bench", __doc__)
    parser.add_argument("--url", help="endpoint of a running server (default: start TorchServe)")
    parser.add_argument("--model", help="TorchServe model to start and/or its built-in payload")
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "-c",
        "--concurrency",
        type=int,
        action="append",
        help="requests in flight (closed loop); repeat for a sweep",
    )
    load.add_argument(
        "--rate",
        type=float,
        action="append",
        help="requests per second (open loop); repeat for a sweep",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="open loop: at most this many in flight; later ones count as missed",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per run, warmup included (10)"
    )
    parser.add_argument("--requests", type=int, help="stop each run after this many requests")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out of figures")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    command.add_payload_arguments(parser)
    parser.add_argument(
        "--config", type=Path, help="config.properties to serve with (default: the project's)"
    )
    batching = parser.add_argument_group(
        "batch settings",
        "serve --model with these instead of its archived ones (registered through the "
        "management API of the private TorchServe started here)",
    )
    batching.add_argument("--batch-size", type=int, help="batchSize")
    batching.add_argument("--max-batch-delay", type=int, help="maxBatchDelay (ms)")
    batching.add_argument("--workers", type=int, help="workers (minWorkers = maxWorkers)")
    parser.add_argument("--out", type=Path, help="results JSON, e.g. docs/bench/NAME.json")
    parser.add_argument("--plot", type=Path, help="PNG: sweep curves or latency histogram")
    args = parser.parse_args(argv)
    if args.url is None and args.model is None:
        parser.error("give --model NAME (start TorchServe with it) or --url of a running server")
    if args.payload is None and args.model is None:
        parser.error("with --url and no --model, give --payload FILE")
    args.overrides = {
        k: v
        for k in ("batch_size", "max_batch_delay", "workers")
        if (v := getattr(args, k)) is not None
    }
    if args.overrides and (args.url is not None or args.model is None):
        parser.error("--batch-size/--max-batch-delay/--workers need --model and no --url")
    if args.duration > 0 and not args.warmup < args.duration:
        parser.error(
            f"--warmup {args.warmup:g} s (default 2) must be shorter than --duration "
            f"{args.duration:g} s (warmup included): nothing would be measured"
        )
    try:  # each override alone, before anything starts
        Setting(**{"batch_size": 1, "max_batch_delay": 0, "workers": 1} | args.overrides)
        loads_of(args)
    except ToolkitError as err:
        parser.error(str(err))
    if not args.concurrency and not args.rate:
        args.concurrency = [8]
    args.project = command.project_of(args) if args.url is None else None
    args.config = args.config or (args.project.properties if args.project else None)
    args.command = command.line("bench", argv)
    return args


def loads_of(args: argparse.Namespace) -> list[loadgen.Load]:
    common = {
        "duration": args.duration,
        "requests": args.requests,
        "warmup": args.warmup,
        "timeout": args.timeout,
        "max_in_flight": args.max_in_flight,
    }
    if args.rate:
        return [loadgen.Load(rate=r, **common) for r in args.rate]
    return [loadgen.Load(concurrency=n, **common) for n in args.concurrency or [8]]


def reachable(url: str, timeout: float) -> None:
    """``Unreachable`` at once when nothing accepts a connection at ``url``'s host and port,
    instead of a whole run of connection errors (a TCP connect only: no request is sent)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:  # a port out of range or not a number
        raise ConfigError(f"--url {url}: {err}") from None
    if not parts.hostname:
        raise ConfigError(f"--url {url} has no host; give http://HOST:PORT/predictions/MODEL")
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        raise Unreachable(
            f"cannot reach {url}: {err.strerror or type(err).__name__} connecting to "
            f"{parts.hostname}:{port}; is the server running there?"
        ) from None


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any]]]:
    """The endpoint URL and what is known of the server: given, or a TorchServe started here."""
    if args.url is not None:
        reachable(args.url, min(args.timeout, 5.0))
        yield args.url, {"kind": "given", "url": args.url}
        return
    project: Project = args.project
    command.archive_of(project, args.model)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        if args.overrides:
            setting = dataclasses.replace(
                archived_setting(project.root, args.model), **args.overrides
            )
            ts = stack.enter_context(batch_server(args.config, workdir, setting.workers))
            stack.enter_context(registered(ts, args.model, setting))
        else:
            ts = stack.enter_context(running(args.config, workdir, models=[args.model]))
        api = ts.management()
        described = api.wait_ready(args.model, timeout=READY_TIMEOUT)
        keys = ("modelName", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
        info = {
            "kind": "torchserve",
            "model": {k: described.get(k) for k in keys}
            | {"workers": len(described.get("workers", []))},
            "worker_environment": dict(ts.environment),
        }
        yield f"{ts.inference_url}/predictions/{args.model}", info


class ProgressLine:
    """One updating line on a terminal: elapsed, done, req/s, errors. Silent on a pipe."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.enabled = stream.isatty()

    def __call__(self, p: loadgen.Progress) -> None:
        if self.enabled:
            rate = p.done / p.elapsed if p.elapsed > 0 else 0.0
            self.stream.write(
                f"\r{self.label}: {p.elapsed:5.1f} s  {p.done:7d} done  "
                f"{rate:7.1f} req/s  {p.errors} errors  {p.in_flight:3d} in flight "
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def summary_line(r: loadgen.LoadResult) -> str:
    load = f"c={r.concurrency}" if r.mode == "closed" else f"rate={r.rate:g}"
    lat = r.latency_ms
    return (
        f"{load:>10}  {r.goodput_rps:8.1f} req/s  p50 {lat.p50:7.1f}  p95 {lat.p95:7.1f}  "
        f"p99 {lat.p99:7.1f} ms  n={r.requests} 503={r.count_503} errors={r.errors} "
        f"missed={r.missed}  client CPU {r.client_cpu_pct:.0f}% of a core"
    )


def check(result: loadgen.LoadResult) -> None:
    """``Unreachable`` when the server never answered, ``ToolkitError`` when no answer was a
    2xx or nothing finished after the warmup: such a run's figures would mean nothing."""
    after = f"after the {result.warmup_s:g} s warmup" if result.warmup_s else "in the run"
    if result.requests == 0:
        raise ToolkitError(
            f"{result.url}: no request finished {after}; lengthen --duration or shorten --warmup"
        )
    if result.ok:
        return
    if result.errors == result.requests:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(result.error_kinds.items()))
        raise Unreachable(
            f"cannot reach {result.url}: none of the {result.requests} requests {after} got an "
            f"answer ({kinds}); is the server running there?"
        )
    statuses = ", ".join(f"{status} x{n}" for status, n in result.status_counts.items())
    raise ToolkitError(
        f"{result.url}: none of the {result.requests} requests {after} got a 2xx answer "
        f"({statuses}); check the URL, the model name and the payload"
    )


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], list[loadgen.LoadResult]]:
    payload = bench_payloads.choose(args.model, args.payload, args.content_type)
    info = machine()
    results = []
    with server_for(args) as (url, server):
        target = loadgen.Target.post(url, payload.bodies, payload.content_type)
        for load in loads_of(args):
            label = f"c={load.concurrency}" if load.concurrency else f"rate={load.rate:g}"
            progress = ProgressLine(sys.stderr, label)
            result = loadgen.run(target, load, progress)
            progress.close()
            print(summary_line(result), flush=True)
            check(result)
            results.append(result)
    document = {
        "command": args.command,
        "client": "servekit.bench.loadgen: one asyncio loop, aiohttp, keep-alive connections",
        "server": server,
        "payload": payload.description,
        "machine": info,
        "runs": [r.to_dict() for r in results],
    }
    return document, results


def write(
    document: dict[str, Any], results: list[loadgen.LoadResult], args: argparse.Namespace
) -> None:
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")
    if args.plot is not None:
        name = args.model or args.url
        title = f"{name} on {document['server']['kind']}, {document['payload']}"
        if len(results) > 1:
            plot_sweep(results, title, args.plot)
        else:
            plot_histogram(results[0], title, args.plot)
        print(f"wrote {args.plot}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()  # a TERM stops the server it started, as Ctrl-C does
    document, results = bench(args)
    write(document, results, args)
    return OK

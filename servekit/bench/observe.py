"""What observability costs: the same model served with metrics logged (A) and scraped (B).

    servekit bench-observe                # make bench-observe; docs/bench/observe-cost.json
    servekit bench-observe --model iris --rounds 1 -c 2 --duration 2 --warmup 0.5 --out x.json

Two configurations of one server and archive (the spec's batch settings, as ``make bench``):

  A  ``metrics_mode=log``: the project's config.properties with metrics written to the log.
  B  ``metrics_mode=prometheus``, ``servekit exporter`` polling every 2 s (its default) and a
     private Prometheus (Debian's) scraping TorchServe's /metrics and the exporter every 1 s:
     harsher than the usual 15 s, so B is an upper bound of what scraping costs.

Method. Both TorchServes are started at once (own ports and TMPDIR) and stay up; each gets
``--server-warmup`` seconds of load first (a cold JVM reads low). Then ``--rounds`` rounds,
each measuring A and B in turn, the order alternating (A B, B A, A B, ...: a linear drift of
the machine falls on both alike). B's exporter and Prometheus run only during B's turns (they
would tax A's turns otherwise): started before the turn, every target scraped once, stopped
after it. In a turn each ``--concurrency`` runs ``--duration`` seconds with the first
``--warmup`` left out (``make bench``'s 10 s and 2 s), the closed-loop client of
``servekit.bench.loadgen``, the percentiles of ``servekit.bench.stats``. Throughput is 2xx
answers per second; p50/p95 are of 2xx answers; errors are answers that are not 2xx plus
requests with no answer at all.

Per concurrency the results give each configuration's rounds and medians, and the ratios B/A
of throughput and p95 with their spread: the ratio of the medians, the ratio within each round
(A and B measured minutes apart at most), each configuration's own spread across rounds
(range / median) and whether A's and B's ranges overlap. Overlapping ranges: the difference
is within the noise of this run. The idle server is not quite idle: TorchServe runs its system
metrics collector every minute in both modes (a short Python process), noise on either side.

In each B turn it also checks that Prometheus saw exactly the requests the client sent:
the increase of ``sum(ts_inference_requests_total)`` (TorchServe counts each prediction of a
known model when it arrives, 503s included) read from scrapes taken after the turn's last
answer, against the requests the client got an HTTP answer to, warmups included.
Figures, not a test: nothing is asserted; exit 0 when every run got 2xx answers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servekit.bench import command, loadgen
from servekit.bench import payloads as bench_payloads
from servekit.bench.machine import machine
from servekit.bench.run import ProgressLine, check, summary_line
from servekit.bench.stats import percentile
from servekit.cli import OK
from servekit.errors import ToolkitError
from servekit.observe.prometheus import Prometheus
from servekit.serve.processes import exit_on_sigterm
from servekit.serve.server import TorchServe, free_ports

READY_TIMEOUT = 300.0
CONFIGURATIONS = {
    "A": "metrics_mode=log (the project's config.properties, metrics to the log)",
    "B": "metrics_mode=prometheus + servekit exporter + Prometheus scraping both",
}
METRICS_MODE = {"A": "log", "B": "prometheus"}
FIGURES = ("goodput_rps", "p50_ms", "p95_ms")
NOISE: dict[bool | None, str] = {
    True: "ranges overlap: within noise",
    False: "ranges apart",
    None: "one round: no range",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = command.parser("bench-observe", __doc__)
    parser.add_argument("--model", default="minilm", help="the model to serve (minilm)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A and B (3)")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        action="append",
        help="requests in flight; repeatable (default: 32, then 1 for latency at no load)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="s per run, warmup incl.")
    parser.add_argument("--warmup", type=float, default=2.0, help="s left out of each run (2)")
    parser.add_argument(
        "--server-warmup", type=float, default=8.0, help="s of load on each new server (8)"
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="B: Prometheus scrapes every (1 s)"
    )
    parser.add_argument(
        "--exporter-interval", type=float, default=2.0, help="B: the exporter polls every (2 s)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    command.add_payload_arguments(parser)
    parser.add_argument(
        "--config", type=Path, help="config.properties to serve with (default: the project's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (default: the project's docs/bench/observe-cost.json)",
    )
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or [32, 1]
    if not 1 <= args.rounds <= 20:
        parser.error(f"--rounds is {args.rounds}; it must be from 1 to 20")
    if args.server_warmup < 0:
        parser.error(f"--server-warmup is {args.server_warmup:g} s; it must be >= 0")
    for flag, value in (("--scrape-interval", args.scrape_interval),
                        ("--exporter-interval", args.exporter_interval)):  # fmt: skip
        if not value > 0:
            parser.error(f"{flag} is {value:g} s; it must be > 0")
    try:
        loads_of(args)  # each Load checks its own figures
        bench_payloads.choose(args.model, args.payload, args.content_type)
    except ToolkitError as err:
        parser.error(str(err))
    args.project = command.project_of(args)
    args.config = args.config or args.project.properties
    args.out = args.out or args.project.root / "docs" / "bench" / "observe-cost.json"
    args.command = command.line("bench-observe", argv)
    return args


def loads_of(args: argparse.Namespace) -> list[loadgen.Load]:
    return [
        loadgen.Load(
            concurrency=c, duration=args.duration, warmup=args.warmup, timeout=args.timeout
        )
        for c in args.concurrency
    ]


def order(rounds: int) -> list[tuple[int, str]]:
    """``(round, configuration)`` in the order measured: A B, B A, A B, ..."""
    turns = []
    for n in range(1, rounds + 1):
        turns += [(n, c) for c in (("A", "B") if n % 2 else ("B", "A"))]
    return turns


@dataclass
class Counted:
    """The client's count of one loadgen run, warmup included (its last progress report),
    each report passed on to ``forward`` (the progress line)."""

    forward: Callable[[loadgen.Progress], None] | None = None
    answered: int = 0
    no_answer: int = 0

    def __call__(self, progress: loadgen.Progress) -> None:
        self.answered = progress.done - progress.errors
        self.no_answer = progress.errors
        if self.forward is not None:
            self.forward(progress)


def run_record(round_: int, configuration: str, result: loadgen.LoadResult) -> dict[str, Any]:
    """One run as the results file keeps it."""
    return {
        "round": round_,
        "configuration": configuration,
        "concurrency": result.concurrency,
        "goodput_rps": round(result.goodput_rps, 2),
        "p50_ms": round(result.latency_ms.p50, 2),
        "p95_ms": round(result.latency_ms.p95, 2),
        "requests": result.requests,
        "errors": result.requests - result.ok,
        "count_503": result.count_503,
        "no_answer": result.errors,
        "client_cpu_pct": round(result.client_cpu_pct, 1),
    }


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the range as a share of the median, of one figure's rounds."""
    middle = median(values)
    return {
        "median": round(middle, 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "range_pct": round(100 * (max(values) - min(values)) / middle, 1) if middle else None,
        "rounds": [round(v, 2) for v in values],
    }


def ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """B/A: of the medians, within each round (paired), and whether the ranges overlap
    (``None`` from one round: a single value has no range to tell noise by)."""
    paired = [y / x for x, y in zip(a, b, strict=True) if x]
    top = median(a)
    return {
        "of_medians": round(median(b) / top, 3) if top else None,
        "per_round": [round(r, 3) for r in paired],
        "per_round_min": round(min(paired), 3) if paired else None,
        "per_round_max": round(max(paired), 3) if paired else None,
        "ranges_overlap": max(a) >= min(b) and max(b) >= min(a) if len(a) > 1 else None,
    }


def round_of(run: Mapping[str, Any]) -> int:
    return int(run["round"])


def summary(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency (in the order first run): each configuration's spread of throughput,
    p50 and p95 across rounds, its errors, and the ratios B/A of throughput and p95."""
    found = []
    for c in dict.fromkeys(r["concurrency"] for r in runs):
        rows = [r for r in runs if r["concurrency"] == c]
        by = {k: sorted((r for r in rows if r["configuration"] == k), key=round_of) for k in "AB"}
        if not by["A"] or [r["round"] for r in by["A"]] != [r["round"] for r in by["B"]]:
            raise ToolkitError(f"concurrency {c}: A and B were not measured in the same rounds")
        entry: dict[str, Any] = {"concurrency": c}
        for k, rows in by.items():
            entry[k] = {f: spread([r[f] for r in rows]) for f in FIGURES}
            entry[k]["errors"] = sum(r["errors"] for r in rows)
        entry["b_over_a"] = {
            "throughput": ratio(*([r["goodput_rps"] for r in by[k]] for k in ("A", "B"))),
            "p95": ratio(*([r["p95_ms"] for r in by[k]] for k in ("A", "B"))),
        }
        found.append(entry)
    return found


def verdict(figure: Mapping[str, Any]) -> str:
    """One line on a ratio: its value, the per-round range and whether it is beyond noise."""
    noise = NOISE[figure["ranges_overlap"]]
    return (
        f"{figure['of_medians']:.3f} (per round {figure['per_round_min']:.3f}-"
        f"{figure['per_round_max']:.3f}; {noise})"
    )


def render(document: Mapping[str, Any]) -> str:
    lines = [f"{document['model']}: A = {CONFIGURATIONS['A']}; B = {CONFIGURATIONS['B']}"]
    for entry in document["summary"]:
        lines.append(f"concurrency {entry['concurrency']}:")
        for k in ("A", "B"):
            f = entry[k]
            lines.append(
                f"  {k}: {f['goodput_rps']['median']:8.1f} req/s "
                f"(rounds {f['goodput_rps']['min']:.1f}-{f['goodput_rps']['max']:.1f})  "
                f"p50 {f['p50_ms']['median']:.1f}  p95 {f['p95_ms']['median']:.1f} ms "
                f"(rounds {f['p95_ms']['min']:.1f}-{f['p95_ms']['max']:.1f})  "
                f"errors {f['errors']}"
            )
        lines.append(f"  B/A throughput {verdict(entry['b_over_a']['throughput'])}")
        lines.append(f"  B/A p95        {verdict(entry['b_over_a']['p95'])}")
    check = document["prometheus_check"]
    lines.append(
        "Prometheus counted exactly the requests answered: "
        + ("yes" if check["exact"] else "NO")
        + "; per B turn (Prometheus, client): "
        + ", ".join(f"({t['prometheus_delta']}, {t['client_answered']})" for t in check["turns"])
    )
    return "\n".join(lines)


@contextlib.contextmanager
def servers(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, TorchServe]]:
    """A and B, started together, every worker of the model READY; stopped on exit."""
    command.archive_of(args.project, args.model)  # a ConfigError saying how to build it
    store = args.project.model_store
    with contextlib.ExitStack() as stack:
        started = {
            k: stack.enter_context(
                TorchServe(
                    args.config,
                    workdir / k,
                    model_store=store,
                    models=[args.model],
                    extra={"metrics_mode": mode},
                )
            )
            for k, mode in METRICS_MODE.items()
        }
        for ts in started.values():
            ts.wait_until_up()
            ts.management().wait_ready(args.model, timeout=READY_TIMEOUT)
        yield started


@contextlib.contextmanager
def exporter(ts: TorchServe, interval: float) -> Iterator[str]:
    """``servekit exporter`` for ``ts`` (its TMPDIR and logs); yields its ``host:port``."""
    port = free_ports(1)[0]
    argv = [sys.executable, "-m", "servekit.cli", "exporter", "--port", str(port),
            "--interval", f"{interval:g}", "--inference-url", ts.inference_url,
            "--management-url", ts.management_url, "--log-dir", str(ts.log_dir)]  # fmt: skip
    with open(ts.workdir / "exporter.log", "ab") as log:
        process = subprocess.Popen(
            argv, env={**os.environ, "TMPDIR": str(ts.tmpdir)}, stdout=log, stderr=log
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def observers(ts: TorchServe, args: argparse.Namespace, workdir: Path) -> Iterator[Prometheus]:
    """B's exporter and Prometheus (jobs ``torchserve``, ``servekit-exporter``), every target
    scraped once; stopped on exit."""
    with exporter(ts, args.exporter_interval) as exported:
        targets = {
            "torchserve": [ts.metrics_url.removeprefix("http://")],
            "servekit-exporter": [exported],
        }
        with Prometheus(workdir, targets, interval=args.scrape_interval) as prom:
            prom.wait_for_targets()
            yield prom


def requests_counted(prom: Prometheus, model: str, since: float) -> int:
    """``sum(ts_inference_requests_total)`` of ``model`` from a scrape of TorchServe taken after
    ``since`` (epoch seconds): the count once every answer the client got is in. No series
    yet is 0: TorchServe makes the counter at the model's first prediction."""
    scraped = 'timestamp(up{job="torchserve"})'
    prom.wait_value(scraped, lambda t: t > since, timeout=30)
    value = prom.value(f'sum(ts_inference_requests_total{{model_name="{model}"}})')
    return 0 if value is None else int(value)


def turn(
    ts: TorchServe, round_: int, configuration: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Counted]:
    payload = bench_payloads.choose(args.model, args.payload, args.content_type)
    target = loadgen.Target.post(
        f"{ts.inference_url}/predictions/{args.model}", payload.bodies, payload.content_type
    )
    records, total = [], Counted()
    for load in loads_of(args):
        progress = ProgressLine(sys.stderr, f"round {round_} {configuration} c={load.concurrency}")
        counted = Counted(progress)
        result = loadgen.run(target, load, counted)
        progress.close()
        print(f"round {round_} {configuration} {summary_line(result)}", flush=True)
        check(result)
        records.append(run_record(round_, configuration, result))
        total.answered += counted.answered
        total.no_answer += counted.no_answer
    return records, total


def warm(ts: TorchServe, args: argparse.Namespace) -> None:
    if args.server_warmup > 0:
        payload = bench_payloads.choose(args.model, args.payload, args.content_type)
        target = loadgen.Target.post(
            f"{ts.inference_url}/predictions/{args.model}", payload.bodies, payload.content_type
        )
        load = loadgen.Load(concurrency=max(args.concurrency), duration=args.server_warmup)
        loadgen.run(target, load)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    info = machine()
    began = time.monotonic()
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    with servers(args, workdir) as started:
        described = {k: ts.management().entry(args.model) for k, ts in started.items()}
        for ts in started.values():
            warm(ts, args)
        for round_, k in order(args.rounds):
            if k == "A":
                runs += turn(started[k], round_, k, args)[0]
                continue
            with observers(started[k], args, workdir / f"prometheus-{round_}") as prom:
                before = requests_counted(prom, args.model, time.time())
                records, counted = turn(started[k], round_, k, args)
                after = requests_counted(prom, args.model, time.time())
            runs += records
            checks.append(
                {
                    "round": round_,
                    "prometheus_delta": after - before,
                    "client_answered": counted.answered,
                    "client_no_answer": counted.no_answer,
                    "exact": after - before == counted.answered,
                }
            )
    keys = ("modelName", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    return {
        "command": args.command,
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "payload": bench_payloads.choose(args.model, args.payload, args.content_type).description,
        "client": "servekit.bench.loadgen (one asyncio loop, aiohttp, keep-alive), closed loop",
        "configurations": {
            "A": {"description": CONFIGURATIONS["A"], "metrics_mode": "log"},
            "B": {
                "description": CONFIGURATIONS["B"],
                "metrics_mode": "prometheus",
                "exporter_interval_s": args.exporter_interval,
                "scrape_interval_s": args.scrape_interval,
                "scrape_jobs": ["torchserve", "servekit-exporter"],
            },
        },
        "servers": {
            k: {key: d.get(key) for key in keys} | {"workers": len(d.get("workers", []))}
            for k, d in described.items()
        },
        "design": {
            "rounds": args.rounds,
            "order": [f"{k}{n}" for n, k in order(args.rounds)],
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_warmup_s": args.server_warmup,
        },
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - began, 1),
        "runs": runs,
        "summary": summary(runs),
        "prometheus_check": {"exact": all(c["exact"] for c in checks), "turns": checks},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()  # a TERM stops the servers and observers started here, as Ctrl-C does
    with tempfile.TemporaryDirectory(prefix="bench-observe-") as workdir:
        document = measure(args, Path(workdir))
    print(render(document))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}")
    return OK

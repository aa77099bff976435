"""The physical limit: the model's in-process batched throughput, with no server.

Batches of ``batch_size`` requests (the bodies the benchmarks send, cycled: the model's
built-in payload or ``--payload FILE``) go through ``LocalModel.predict``: TorchServe's own
worker code and the archived handler, decoding, forward and encoding included, with no HTTP
and no queue.

    servekit limit --mar model_store/minilm.mar --batch-size 16 --duration 5
    servekit limit --batch-size 16 --processes 2   # the project's minilm.mar, 2 x 1 thread, summed
    servekit limit --model tiny --payload body.json  # the project's tiny.mar, your request body

With ``--processes N`` it runs N such loops at once in separate processes, each with
cores / N torch threads (as N TorchServe workers get here), and reports their sum: the limit
for N workers. Prints one JSON line; exit 2 when the archive or the project is missing, the
file is not a .mar, or no payload is known for the model; 1 when the model fails requests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from servekit.bench import command
from servekit.bench import payloads as bench_payloads
from servekit.bench.stats import percentile
from servekit.cli import OK
from servekit.errors import ArchiveError, ConfigError, ToolkitError
from servekit.serve.harness import LocalModel, Request
from servekit.serve.marinfo import read_mar


@dataclasses.dataclass(frozen=True)
class LimitResult:
    """Items per second over ``batches`` batches of ``batch_size`` (warm-up batches left out)."""

    batch_size: int
    batches: int
    items: int
    seconds: float
    threads: int
    batch_ms_p50: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {**dataclasses.asdict(self), "items_per_s": round(self.items_per_s, 2)}


def request_batches(
    batch_size: int, payload: bench_payloads.Payload | None = None
) -> itertools.cycle[list[Request]]:
    """Batches of ``payload``'s bodies, cycled (default: the sentences minilm is sent)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}; it must be at least 1")
    payload = payload or bench_payloads.minilm()
    requests = [Request.raw(body, payload.content_type) for body in payload.bodies]
    stream = itertools.cycle(requests)
    return itertools.cycle(
        [[next(stream) for _ in range(batch_size)] for _ in range(len(requests))]
    )


def measure(
    model: LocalModel,
    batch_size: int,
    duration: float = 5.0,
    warmup_batches: int = 2,
    payload: bench_payloads.Payload | None = None,
) -> LimitResult:
    """Run batches for about ``duration`` seconds (at least one) and count the items served."""
    if duration <= 0:
        raise ConfigError(f"duration is {duration} s; give a positive number of seconds")
    batches = request_batches(batch_size, payload)
    for _ in range(warmup_batches):
        _serve(model, next(batches))
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < duration:
        began = time.perf_counter()
        _serve(model, next(batches))
        times.append(time.perf_counter() - began)
    return LimitResult(
        batch_size=batch_size,
        batches=len(times),
        items=len(times) * batch_size,
        seconds=sum(times),
        threads=torch.get_num_threads(),
        batch_ms_p50=round(percentile(sorted(times), 50) * 1000, 3),
    )


def _serve(model: LocalModel, batch: list[Request]) -> None:
    failed = [reply.status for reply in model.predict(batch) if reply.status != 200]
    if failed:
        raise ToolkitError(
            f"{model.name}: {len(failed)} of {len(batch)} requests failed: {failed}; "
            "is the payload one this model accepts? (--payload FILE)"
        )


def model_name(mar: Path) -> str:
    """The model name in ``mar``'s manifest; a ``ConfigError`` naming a file that is no .mar."""
    if not mar.is_file():
        raise ConfigError(f"archive {mar} does not exist; build it with `servekit archive`")
    try:
        return str(read_mar(mar).manifest["model"]["modelName"])
    except ArchiveError as err:
        raise ConfigError(str(err)) from None


def in_processes(
    mar: Path, batch_size: int, duration: float, processes: int, payload_argv: Sequence[str] = ()
) -> dict[str, Any]:
    """``processes`` limit loops at once, cores / processes threads each; their sum.
    ``payload_argv``: the ``--payload``/``--content-type`` options each loop gets."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    limit_argv = [sys.executable, "-m", "servekit.cli", "limit", "--mar", str(mar)]
    limit_argv += ["--batch-size", str(batch_size), "--duration", str(duration)]
    limit_argv += ["--threads", str(threads), *payload_argv]
    running = [
        subprocess.Popen(limit_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = [p.communicate(timeout=duration + 600) for p in running]
    if any(p.returncode != 0 for p in running):
        codes = [p.returncode for p in running]
        last = next(err for p, (_, err) in zip(running, outputs, strict=True) if p.returncode)
        raise ToolkitError(f"a limit process failed (exit codes {codes}): {last.strip()[-1500:]}")
    each = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return {
        "batch_size": batch_size,
        "processes": processes,
        "threads": threads,
        "items_per_s": round(sum(r["items_per_s"] for r in each), 2),
        "each": each,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = command.parser("limit", __doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mar", type=Path, help="the archive, any path")
    which.add_argument(
        "--model", help="the project's model_store/MODEL.mar (default: minilm, with --mar none)"
    )
    command.add_payload_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of batches (5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--processes", type=int, default=1, help="loops in parallel (1)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes is {args.processes}; it must be >= 1")
    if (
        args.batch_size < 1
        or not args.duration > 0
        or (args.threads is not None and args.threads < 1)
    ):
        parser.error("--batch-size and --threads must be >= 1, --duration > 0")
    mar = args.mar or command.archive_of(command.project_of(args), args.model or "minilm")
    payload = bench_payloads.choose(model_name(mar), args.payload, args.content_type)
    if args.processes > 1:
        payload_argv = ["--payload", str(args.payload)] if args.payload else []
        payload_argv += ["--content-type", args.content_type] if args.content_type else []
        print(
            json.dumps(
                in_processes(mar, args.batch_size, args.duration, args.processes, payload_argv)
            )
        )
        return OK
    if args.threads:
        torch.set_num_threads(args.threads)
    with LocalModel.from_mar(mar) as model:
        if args.threads:  # again: the handler sets its torch_threads option when it loads
            torch.set_num_threads(args.threads)
        result = measure(model, args.batch_size, args.duration, payload=payload)
    print(json.dumps(result.to_dict()))
    return OK

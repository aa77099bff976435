"""The physical limit: the model's in-process batched throughput, with no server.

Batches of ``batch_size`` one-sentence requests (the sentences the benchmarks send, cycled)
go through ``LocalModel.predict``: TorchServe's own worker code and the archived handler,
tokenization, padding, forward and pooling included, with no HTTP and no queue.

    python -m servekit.baselines.limit --mar model_store/minilm.mar --batch-size 16 --duration 5
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from servekit import bench_payloads
from servekit.errors import ConfigError
from servekit.harness import LocalModel, Request


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


def sentence_batches(batch_size: int) -> itertools.cycle[list[Request]]:
    """Batches of one-sentence JSON requests, the bodies ``bench_payloads.minilm`` sends."""
    if batch_size < 1:
        raise ConfigError(f"batch_size is {batch_size}; it must be at least 1")
    bodies = bench_payloads.minilm().bodies
    requests = [Request.raw(body, "application/json") for body in bodies]
    stream = itertools.cycle(requests)
    return itertools.cycle([[next(stream) for _ in range(batch_size)] for _ in range(len(bodies))])


def measure(
    model: LocalModel, batch_size: int, duration: float = 5.0, warmup_batches: int = 2
) -> LimitResult:
    """Run batches for about ``duration`` seconds (at least one) and count the items served."""
    if duration <= 0:
        raise ConfigError(f"duration is {duration} s; give a positive number of seconds")
    batches = sentence_batches(batch_size)
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
        batch_ms_p50=round(statistics.median(times) * 1000, 3),
    )


def _serve(model: LocalModel, batch: list[Request]) -> None:
    failed = [reply.status for reply in model.predict(batch) if reply.status != 200]
    if failed:
        raise RuntimeError(f"{model.name}: {len(failed)} of {len(batch)} requests failed: {failed}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=Path("model_store/minilm.mar"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of batches (5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with LocalModel.from_mar(args.mar) as model:
        result = measure(model, args.batch_size, args.duration)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

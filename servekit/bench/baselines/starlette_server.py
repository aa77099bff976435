"""The seed-001 design, done right: Starlette + uvicorn, one asyncio queue, dynamic batching.

The archived MiniLM handler is loaded ONCE (``LocalModel.from_mar``: TorchServe's worker code,
so replies, per-request 4xx included, are byte for byte TorchServe's). One ``asyncio.Queue``
feeds one batcher task: it takes the first item, then collects until a **single** deadline
(``max_delay_ms`` after that first item) or ``max_batch_size`` items, and runs the batch on a
single-thread executor so the event loop never blocks. A full queue answers 503 at once
(circuit breaking). ``GET /stats`` shows the batch-size histogram; ``GET /ping`` is health.

Threads: torch keeps its default (one intra-op thread per physical core), which is what a
TorchServe 0.12 worker gets: it does not call ``torch.set_num_threads``. ``--threads`` sets it.

    python -m servekit.bench.baselines.starlette_server --mar model_store/minilm.mar --port 9001
    curl -H 'Content-Type: application/json' -d '"Hello there."' \\
        http://127.0.0.1:9001/predictions/minilm
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servekit.errors import ConfigError
from servekit.serve.harness import LocalModel, Reply
from servekit.serve.harness import Request as ModelRequest


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """The batcher's limits, checked once at start."""

    max_batch_size: int = 16
    max_delay_ms: float = 10.0
    queue_size: int = 100

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.max_delay_ms < 0:
            raise ConfigError(f"max_delay_ms is {self.max_delay_ms}; give 0 or more")


@dataclasses.dataclass
class Job:
    request: ModelRequest
    reply: asyncio.Future[Reply]


class Batcher:
    """One queue, one batcher task, one inference thread."""

    def __init__(self, model: LocalModel, settings: BatchSettings) -> None:
        self.model, self.settings = model, settings
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.rejected = 0

    def submit(self, request: ModelRequest) -> asyncio.Future[Reply] | None:
        """The reply's future, or None when the queue is full."""
        job = Job(request, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.rejected += 1
            return None
        return job.reply

    async def run(self) -> None:
        while True:
            batch = await self.collect()
            await self.serve(batch)

    async def collect(self) -> list[Job]:
        """The first job, then more until the single deadline or the maximum batch size."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.settings.max_delay_ms / 1000
        while len(batch) < self.settings.max_batch_size:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def serve(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.reply.done()]  # a client may have gone
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        loop = asyncio.get_running_loop()
        requests = [job.request for job in live]
        try:
            replies = await loop.run_in_executor(self.executor, self.model.predict, requests)
        except Exception as err:  # the harness failed as a whole: every request gets a 500
            for job in live:
                if not job.reply.done():
                    job.reply.set_exception(err)
            return
        for job, reply in zip(live, replies, strict=True):
            if not job.reply.done():
                job.reply.set_result(reply)

    def stats(self) -> dict[str, Any]:
        served = sum(size * n for size, n in self.batch_sizes.items())
        return {
            "settings": dataclasses.asdict(self.settings),
            "batches": sum(self.batch_sizes.values()),
            "requests": served,
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
            "queued": self.queue.qsize(),
            "rejected_503": self.rejected,
            "torch_threads": _torch_threads(),
        }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "type": "ServiceUnavailable", "message": message}, status)


def create_app(mar: Path, settings: BatchSettings, model_name: str = "minilm") -> Starlette:
    """The app: the model loads (once) and the batcher starts in the lifespan."""
    state: dict[str, Batcher] = {}

    async def predict(request: HttpRequest) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "application/octet-stream")
        future = state["batcher"].submit(ModelRequest.raw(body, content_type))
        if future is None:
            return _error(503, f"model '{model_name}': queue full, retry later")
        try:
            reply = await future
        except Exception:
            return JSONResponse({"code": 500, "type": "InternalServerError"}, 500)
        return Response(reply.body, reply.status, media_type=reply.content_type or None)

    async def ping(_: HttpRequest) -> Response:
        return JSONResponse({"status": "Healthy" if state else "Loading"}, 200 if state else 503)

    async def stats(_: HttpRequest) -> Response:
        return JSONResponse(state["batcher"].stats())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        model = await asyncio.to_thread(LocalModel.from_mar, mar, settings.max_batch_size)
        batcher = Batcher(model, settings)
        task = asyncio.create_task(batcher.run())
        state["batcher"] = batcher
        try:
            yield
        finally:
            task.cancel()
            batcher.executor.shutdown(wait=True)
            model.close()

    return Starlette(
        routes=[
            Route(f"/predictions/{model_name}", predict, methods=["POST"]),
            Route("/ping", ping),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=Path("model_store/minilm.mar"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    parser.add_argument("--queue-size", type=int, default=100, help="waiting jobs; then 503")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if not args.mar.is_file():
        parser.error(f"archive {args.mar} does not exist; build it with 'servekit archive'")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = BatchSettings(args.max_batch_size, args.max_delay_ms, args.queue_size)
    app = create_app(args.mar, settings, args.mar.stem)
    print(json.dumps({"serving": f"http://{args.host}:{args.port}/predictions/{args.mar.stem}"}))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

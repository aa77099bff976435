"""LitServe (0.2.19, pinned) serving the same archived MiniLM handler with its own batching.

LitServe's API process takes the HTTP request, its inference worker process collects up to
``max_batch_size`` requests within ``batch_timeout`` seconds and calls ``predict`` once per
batch. ``predict`` hands the batch to ``LocalModel.predict`` (the archived handler through
TorchServe's worker code, loaded once in ``setup``), so bodies and per-request statuses match
TorchServe's. Each request's validation runs in the handler, not in ``decode_request``:
LitServe fails a whole batch when ``decode_request`` raises for one request.

Endpoint: ``POST /predictions/minilm`` (LitServe's ``api_path``); health: ``GET /health``.
LitServe parses the body with ``request.json()``: send JSON (a text/plain body gets its 500).
Threads: as for TorchServe's worker, torch keeps its default unless ``--threads`` is given.

    python -m servekit.bench.baselines.litserve_server --mar model_store/minilm.mar --port 9002
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls
from starlette.requests import Request
from starlette.responses import Response

from servekit.serve.harness import LocalModel, Reply
from servekit.serve.harness import Request as ModelRequest


class MiniLMAPI(ls.LitAPI):
    """The archived handler behind LitServe's batching loop."""

    def __init__(self, mar: Path, max_batch_size: int, batch_timeout: float, **kw: Any) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, **kw)
        self.mar, self.threads = mar, 0
        self.model: LocalModel | None = None

    def setup(self, device: str) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.model = LocalModel.from_mar(self.mar, self.max_batch_size)

    # No ``from __future__ import annotations`` here: LitServe builds the endpoint from these
    # two annotations at run time. ``request`` arrives as the parsed JSON body.
    def decode_request(self, request: Request) -> ModelRequest:
        return ModelRequest.json(request)

    def batch(self, inputs: list[ModelRequest]) -> list[ModelRequest]:
        return inputs

    def predict(self, x: Any) -> list[Reply]:
        if self.model is None:
            raise RuntimeError(f"{self.mar}: setup() has not loaded the model")
        requests: list[ModelRequest] = x if isinstance(x, list) else [x]
        print(f"batch of {len(requests)}", flush=True)  # the log shows LitServe's batching
        return self.model.predict(requests)

    def unbatch(self, output: list[Reply]) -> list[Reply]:
        return output

    def encode_response(self, output: Reply) -> Response:
        return Response(output.body, output.status, media_type=output.content_type or None)


def server(
    mar: Path,
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    threads: int = 0,
    workers: int = 1,
) -> ls.LitServer:
    """``workers`` CPU inference workers (as TorchServe's) on ``/predictions/<model>``."""
    api = MiniLMAPI(mar, max_batch_size, batch_timeout, api_path=f"/predictions/{mar.stem}")
    api.threads = threads
    return ls.LitServer(api, accelerator="cpu", workers_per_device=workers, timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, default=Path("model_store/minilm.mar"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    args = parser.parse_args(argv)
    if not args.mar.is_file():
        parser.error(f"archive {args.mar} does not exist; build it with 'servekit archive'")
    lit = server(
        args.mar.resolve(),
        args.max_batch_size,
        args.batch_timeout_ms / 1000,
        args.threads,
        args.workers,
    )
    print(json.dumps({"serving": f"http://{args.host}:{args.port}/predictions/{args.mar.stem}"}))
    lit.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

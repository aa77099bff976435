"""Producer side of the queue bridge: ``submit`` a request, wait for its ``result``.

    >>> from servekit.queue.client import QueueClient
    >>> with QueueClient("amqp://guest:guest@127.0.0.1:5673/%2F", "redis://127.0.0.1:6380/0") as c:
    ...     request_id = c.submit("iris", {"features": [5.1, 3.5, 1.4, 0.2]})
    ...     answer = c.result(request_id, timeout=30)  # doctest: +SKIP
    >>> answer.status, answer.json()["label"]  # doctest: +SKIP
    (200, 'setosa')

``result`` blocks in Redis (``BLPOP`` on the request's wake-up list), so a waiting producer
costs nothing and wakes as soon as the bridge stores the answer. A client holds one AMQP
and one Redis connection and is not thread-safe: use one per thread.

CLI (``servekit ask``, with the ``[queue]`` extra)::

    servekit ask iris request.json          # submit, wait, print the answer
    servekit ask digits digit.png --timeout 60 --json

Exit codes: 0 a 2xx answer, 1 an error answer (4xx/5xx, dead-lettered), 2 usage error,
3 no answer in time or a broker unreachable.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pika
import redis

from servekit.queue.bridge import DEFAULT_AMQP_URL, DEFAULT_QUEUE, DEFAULT_REDIS_URL, declare_queues
from servekit.queue.messages import (
    DEFAULT_PREFIX,
    InferenceRequest,
    QueueError,
    StoredResult,
    check_request_id,
    decode_request,
    done_key,
    result_key,
)

EXIT_OK, EXIT_ERROR_ANSWER, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
BLOCK_SLICE_SECONDS = 2.0  # below redis-py's default socket timeout (5 s)


class ResultTimeout(QueueError):
    """No result arrived in time."""


def encode_payload(payload: Any, content_type: str | None) -> tuple[bytes, str]:
    """Bytes as they are, str as UTF-8 text, anything else as JSON; with a fitting content type."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload), content_type or "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode(), content_type or "text/plain; charset=utf-8"
    return json.dumps(payload).encode(), content_type or "application/json"


class QueueClient:
    """Publishes requests to ``queue`` and reads results from Redis under ``prefix``."""

    def __init__(
        self,
        amqp_url: str = DEFAULT_AMQP_URL,
        redis_url: str = DEFAULT_REDIS_URL,
        queue: str = DEFAULT_QUEUE,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.queue, self.prefix = queue, prefix
        self._redis = redis.Redis.from_url(redis_url)
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._channel = self._connection.channel()
        declare_queues(self._channel, queue)
        self._channel.confirm_delivery()  # submit returns only once RabbitMQ has the message

    def submit(
        self,
        model: str,
        payload: Any,
        content_type: str | None = None,
        request_id: str | None = None,
        ttl: int | None = None,
    ) -> str:
        """Publish one request (persistent, confirmed) and return its id.

        Passing your own ``request_id`` makes the submit idempotent: a retried submit with the
        same id is answered once, and the first answer stays. Whoever sends an id first owns
        its result, so own ids must be unique and unguessable (the default is a uuid4).
        A request the bridge would refuse (a bad model name or content type, a ttl out of
        range, over the size limit) raises ``MalformedMessage`` here and is not published.
        """
        body, content_type = encode_payload(payload, content_type)
        request_id = check_request_id(request_id or uuid.uuid4().hex)
        envelope = InferenceRequest(request_id, model, body, content_type, ttl).encode()
        decode_request(envelope)  # what the bridge would refuse is refused here, with its reason
        self._channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            body=envelope,
            properties=pika.BasicProperties(
                content_type="application/json",
                message_id=request_id,
                delivery_mode=pika.DeliveryMode.Persistent,
            ),
            mandatory=True,
        )
        return request_id

    def result(self, request_id: str, timeout: float = 60.0) -> StoredResult:
        """The stored answer for ``request_id``; blocks (no polling) up to ``timeout`` seconds."""
        key, token = result_key(self.prefix, request_id), done_key(self.prefix, request_id)
        deadline = time.monotonic() + timeout
        raw = self._redis.get(key)
        while raw is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"no result for request {request_id} after {timeout} s; is a bridge "
                    f"consuming queue '{self.queue}' (make bridge) and TorchServe up?"
                )
            # Block in slices shorter than the socket timeout: a longer BLPOP with nothing to
            # report dies with "Timeout reading from socket" (redis-py 8 defaults to 5 s).
            wait = min(max(remaining, 0.01), BLOCK_SLICE_SECONDS)
            if self._redis.blpop([token], timeout=wait) is not None:
                self._return_token(key, token)
            raw = self._redis.get(key)
        return StoredResult.decode(raw)

    def _return_token(self, key: str, token: str) -> None:
        """Put the wake-up token back so that other waiters on the same id wake up too."""
        ttl = self._redis.ttl(key)
        if isinstance(ttl, int) and ttl > 0:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(token, b"1")
                pipe.expire(token, ttl)
                pipe.execute()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()
        self._redis.close()

    def __enter__(self) -> QueueClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit ask",
        description="Submit a file to a model through RabbitMQ and wait for the answer in Redis.",
    )
    parser.add_argument("model", help="TorchServe model name, e.g. iris")
    parser.add_argument("file", type=Path, help="the payload; its extension sets the content type")
    parser.add_argument("--content-type", help="override the guessed content type")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    parser.add_argument("--ttl", type=int, help="seconds Redis keeps the result (bridge default)")
    parser.add_argument("--json", action="store_true", help="print the whole result record")
    parser.add_argument("--amqp-url", default=os.environ.get("SERVEKIT_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument(
        "--redis-url", default=os.environ.get("SERVEKIT_REDIS_URL", DEFAULT_REDIS_URL)
    )
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    return parser


def _render(result: StoredResult, as_json: bool) -> str:
    try:
        body: Any = result.json()
    except ValueError:
        body = result.body.decode("utf-8", "replace")
    if as_json:
        record = json.loads(result.encode()) | {"body": body}
        return json.dumps(record, indent=2)
    shown = json.dumps(body, indent=2) if not isinstance(body, str) else body
    return f"{result.status} {shown}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.file.is_file():
        print(f"servekit ask: {args.file} is not a file", file=sys.stderr)
        return EXIT_USAGE
    content_type = args.content_type or mimetypes.guess_type(args.file.name)[0]
    try:
        with QueueClient(args.amqp_url, args.redis_url, args.queue) as client:
            request_id = client.submit(
                args.model, args.file.read_bytes(), content_type, ttl=args.ttl
            )
            print(f"submitted {request_id}", file=sys.stderr)
            result = client.result(request_id, args.timeout)
    except QueueError as error:
        print(f"servekit ask: {error}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(error, ResultTimeout) else EXIT_NO_ANSWER
    except (pika.exceptions.AMQPError, redis.RedisError) as error:
        print(f"servekit ask: broker unreachable: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_NO_ANSWER
    print(_render(result, args.json))
    return EXIT_OK if result.ok else EXIT_ERROR_ANSWER

"""Feed TorchServe from RabbitMQ: take a request, call the inference API, store the answer in Redis.

    producer --publish--> RabbitMQ queue --(prefetch N)--> bridge --HTTP--> TorchServe
    producer <--BLPOP---- Redis <--SET result + push "done"--- bridge --ack--> RabbitMQ

Guarantees (see README, "Asynchronous inference"):

- a message is acknowledged only after its result is in Redis; a bridge that dies leaves its
  unacknowledged messages to RabbitMQ, which redelivers them to another bridge;
- 503 (job queue full), 408/429/502/504, a dead worker or an unreachable server are retried
  with backoff; after ``RetryPolicy.max_attempts`` the message is requeued, never dropped;
- any other 4xx/5xx, and a message that is not a valid envelope, is stored as the result
  *and* published to ``<queue>.dead`` with the error in its headers, then acknowledged;
- results are keyed by request id: a redelivered message overwrites its own result, and one
  whose result is already stored is acknowledged without calling TorchServe again;
- at most ``prefetch`` messages are held (and in flight to TorchServe) per bridge.

    >>> config = BridgeConfig("amqp://guest:guest@127.0.0.1:5672/%2F", "redis://127.0.0.1:6379/0")
    >>> Bridge(config).run()  # doctest: +SKIP   (until stop() or SIGTERM)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pika
import redis
import requests

from servekit.errors import ConfigError, ServerError
from servekit.queue_messages import (
    DEFAULT_PREFIX,
    MAX_TTL,
    InferenceRequest,
    MalformedMessage,
    StoredResult,
    decode_request,
    done_key,
    result_key,
)
from servekit.queue_retry import RetryPolicy, Verdict, classify, error_message
from servekit.testservers import brokers

log = logging.getLogger("servekit.queue_bridge")

DEFAULT_QUEUE = "inference"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_SUFFIX = ".dead"
MAX_PREFETCH = 1000


def dead_letter_queue(queue: str) -> str:
    return queue + DEAD_SUFFIX


def declare_queues(channel: Any, queue: str) -> None:
    """The request queue and its dead-letter queue, both durable (producers declare them too)."""
    channel.queue_declare(queue=queue, durable=True)
    channel.queue_declare(queue=dead_letter_queue(queue), durable=True)


@dataclass(frozen=True)
class BridgeConfig:
    """Where to read, where to call, where to write, and how much to hold at once."""

    amqp_url: str
    redis_url: str
    inference_url: str = "http://127.0.0.1:8080"
    queue: str = DEFAULT_QUEUE
    prefix: str = DEFAULT_PREFIX
    prefetch: int = 8
    result_ttl: int = 3600
    http_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= MAX_PREFETCH:
            raise ConfigError(
                f"prefetch is {self.prefetch}; expected 1-{MAX_PREFETCH}. Keep prefetch x bridges "
                "at or below TorchServe's job_queue_size so the bridges never overfill it"
            )
        if not 1 <= self.result_ttl <= MAX_TTL:
            raise ConfigError(f"result_ttl is {self.result_ttl}; expected 1-{MAX_TTL} seconds")
        for name in ("amqp_url", "redis_url", "inference_url"):
            if "://" not in getattr(self, name):
                raise ConfigError(
                    f"{name} is {getattr(self, name)!r}; expected a URL like "
                    "'amqp://guest:guest@127.0.0.1:5672/%2F', 'redis://127.0.0.1:6379/0'"
                )
        if not self.queue or self.queue.endswith(DEAD_SUFFIX):
            raise ConfigError(
                f"queue is {self.queue!r}; expected a name not ending in {DEAD_SUFFIX!r}"
            )


@dataclass(frozen=True)
class Outcome:
    """What the connection thread does with one delivery once its work is over."""

    verdict: Verdict  # DONE: ack; DEAD: publish to the dead-letter queue, then ack; RETRY: requeue
    request_id: str | None = None
    error: str | None = None
    status: int | None = None


def error_body(status: int, kind: str, message: str) -> bytes:
    """An error in the handlers' JSON shape, for errors the bridge finds itself."""
    return json.dumps({"code": status, "type": kind, "message": message}).encode()


class Bridge:
    """One consumer: a connection thread for AMQP, ``prefetch`` worker threads for HTTP and Redis.

    Run several (processes or machines) on the same queue to scale; RabbitMQ spreads the
    messages and redelivers what a dead bridge held.
    """

    def __init__(self, config: BridgeConfig, name: str | None = None) -> None:
        self.config = config
        self.name = name or f"bridge-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._local = threading.local()
        self._redis = redis.Redis.from_url(config.redis_url, socket_timeout=10)
        self._connection: Any = None
        self._channel: Any = None
        self._in_flight = 0
        self.ready = threading.Event()

    # --- the connection thread -------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``; in-flight messages are finished (or requeued) before return."""
        self._connection = pika.BlockingConnection(pika.URLParameters(self.config.amqp_url))
        try:
            self._channel = self._connection.channel()
            declare_queues(self._channel, self.config.queue)
            self._channel.confirm_delivery()  # dead-letter publishes are confirmed before the ack
            self._channel.basic_qos(prefetch_count=self.config.prefetch)
            with ThreadPoolExecutor(self.config.prefetch, thread_name_prefix=self.name) as pool:
                self._channel.basic_consume(
                    self.config.queue, functools.partial(self._on_message, pool)
                )
                log.info(
                    "%s consuming %s (prefetch %d)",
                    self.name,
                    self.config.queue,
                    self.config.prefetch,
                )
                self.ready.set()
                if not self._stopping.is_set():
                    self._channel.start_consuming()
                while self._in_flight:  # let workers hand back their outcomes
                    self._connection.process_data_events(time_limit=0.05)
        finally:
            if self._connection.is_open:
                self._connection.close()
            self._redis.close()

    def stop(self) -> None:
        """Ask ``run`` to stop (any thread, or a signal handler)."""
        self._stopping.set()
        connection, channel = self._connection, self._channel
        if connection is not None and channel is not None and connection.is_open:
            connection.add_callback_threadsafe(channel.stop_consuming)

    def _on_message(
        self, pool: ThreadPoolExecutor, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        self._in_flight += 1
        pool.submit(self._work, method.delivery_tag, method.redelivered, properties, body)

    def _finish(self, tag: int, properties: Any, body: bytes, outcome: Outcome) -> None:
        self._in_flight -= 1
        try:
            if outcome.verdict is Verdict.RETRY:
                self._channel.basic_nack(tag, requeue=True)
                self._count("requeued")
                return
            if outcome.verdict is Verdict.DEAD:
                self._dead_letter(properties, body, outcome)
            self._channel.basic_ack(tag)
        except pika.exceptions.AMQPError:
            # The ack (or the dead-letter publish) did not happen: RabbitMQ redelivers the
            # message and its stored result makes the second pass a no-op.
            log.exception("%s could not settle delivery %s", self.name, tag)

    def _dead_letter(self, properties: Any, body: bytes, outcome: Outcome) -> None:
        headers = {
            "x-error": outcome.error or "",
            "x-status": outcome.status or 0,
            "x-request-id": outcome.request_id or "",
            "x-bridge": self.name,
        }
        self._channel.basic_publish(
            exchange="",
            routing_key=dead_letter_queue(self.config.queue),
            body=body,
            properties=pika.BasicProperties(
                content_type=properties.content_type,
                message_id=outcome.request_id or properties.message_id,
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=headers,
            ),
            mandatory=True,
        )
        self._count("dead")
        log.info("%s dead-lettered %s: %s", self.name, outcome.request_id, outcome.error)

    # --- worker threads ------------------------------------------------------------------------

    def _work(self, tag: int, redelivered: bool, properties: Any, body: bytes) -> None:
        try:
            outcome = self.process(body, properties.message_id, redelivered)
        except Exception:  # one place catches: log it, give the message back, keep consuming
            log.exception("%s failed on delivery %s; requeueing it", self.name, tag)
            outcome = Outcome(Verdict.RETRY)
        self._connection.add_callback_threadsafe(
            functools.partial(self._finish, tag, properties, body, outcome)
        )

    def process(self, raw: bytes, message_id: str | None, redelivered: bool) -> Outcome:
        """Everything but the AMQP settlement: decode, call TorchServe (with retries), store."""
        try:
            request = decode_request(raw, message_id)
        except MalformedMessage as error:
            return self._malformed(error)
        if redelivered:
            stored = self._stored(request.id)
            if stored is not None:  # done before a crash or lost ack: do not do it twice
                self._count("replayed")
                return self._outcome(stored)
        result = self._call_with_retries(request)
        if result is None:
            return Outcome(Verdict.RETRY, request.id)
        if not self._store(result, request.ttl or self.config.result_ttl):
            return Outcome(Verdict.RETRY, request.id)
        self._count("done" if result.ok else "failed")
        return self._outcome(result)

    def _outcome(self, result: StoredResult) -> Outcome:
        verdict = Verdict.DONE if result.ok else Verdict.DEAD
        return Outcome(verdict, result.id, result.error, result.status)

    def _malformed(self, error: MalformedMessage) -> Outcome:
        self._count("malformed")
        if error.request_id is not None:
            result = StoredResult(
                error.request_id,
                "",
                400,
                "application/json",
                error_body(400, "MalformedMessage", str(error)),
                str(error),
                attempts=0,
                bridge=self.name,
            )
            if not self._store(result, self.config.result_ttl):
                return Outcome(Verdict.RETRY, error.request_id)
        return Outcome(Verdict.DEAD, error.request_id, str(error), 400)

    def _call_with_retries(self, request: InferenceRequest) -> StoredResult | None:
        """TorchServe's final answer, or ``None`` when retries ran out (or the bridge stops)."""
        policy = self.config.retry
        for attempt in range(1, policy.max_attempts + 1):
            status, content_type, body = self._call(request)
            if classify(status, body) is not Verdict.RETRY:
                error = None if 200 <= status < 300 else error_message(body)
                return StoredResult(
                    request.id, request.model, status, content_type, body, error, attempt, self.name
                )
            self._count("retries")
            if self._stopping.wait(policy.delay(attempt)):
                return None
        log.warning(
            "%s: %s still failing after %d attempts; requeued",
            self.name,
            request.id,
            policy.max_attempts,
        )
        return None

    def _call(self, request: InferenceRequest) -> tuple[int, str, bytes]:
        url = f"{self.config.inference_url}/predictions/{quote(request.model, safe='/')}"
        try:
            response = self._session().post(
                url,
                data=request.body,
                headers={"Content-Type": request.content_type},
                timeout=self.config.http_timeout,
            )
        except requests.RequestException as error:  # unreachable or timed out: transient
            return 503, "text/plain", f"{type(error).__name__}: {error}".encode()
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return response.status_code, content_type, response.content

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    # --- Redis ---------------------------------------------------------------------------------

    def _store(self, result: StoredResult, ttl: int) -> bool:
        """SET the result and push its wake-up token, atomically; retried while Redis is away."""
        prefix = self.config.prefix
        for attempt in range(1, self.config.retry.max_attempts + 1):
            try:
                with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(result_key(prefix, result.id), result.encode(), ex=ttl)
                    pipe.delete(done_key(prefix, result.id))  # one token, however many passes
                    pipe.rpush(done_key(prefix, result.id), b"1")
                    pipe.expire(done_key(prefix, result.id), ttl)
                    pipe.execute()
                return True
            except redis.RedisError:
                log.warning(
                    "%s: Redis write failed (attempt %d)", self.name, attempt, exc_info=True
                )
                if self._stopping.wait(self.config.retry.delay(attempt)):
                    return False
        return False

    def _stored(self, request_id: str) -> StoredResult | None:
        raw = self._redis.get(result_key(self.config.prefix, request_id))
        return None if raw is None else StoredResult.decode(raw)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="queue_bridge.py",
        description="Consume inference requests from RabbitMQ, call TorchServe, store results "
        "in Redis. Stops cleanly on SIGTERM/Ctrl-C (unfinished messages go back to the queue).",
    )
    parser.add_argument("--amqp-url", default=env("SERVEKIT_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument("--redis-url", default=env("SERVEKIT_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="Redis key prefix")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=8,
        help="messages held at once; x bridges <= job_queue_size (8)",
    )
    parser.add_argument("--result-ttl", type=int, default=3600, help="seconds (3600)")
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=RetryPolicy.max_attempts,
        help="tries on 503/dead worker before requeueing the message",
    )
    parser.add_argument("--name", help="bridge name in logs and dead letters")
    parser.add_argument(
        "--local-brokers",
        type=Path,
        metavar="DIR",
        help="first start private rabbitmq-server and redis-server under DIR on "
        "the ports of --amqp-url and --redis-url; stop them on exit",
    )
    return parser


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ConfigError(f"{url!r} has no port; --local-brokers needs explicit ports")
    return port


def _serve(bridge: Bridge) -> None:
    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: signal %d, stopping", bridge.name, signum)
        bridge.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bridge.run()
    log.info("%s stopped: %s", bridge.name, dict(bridge.stats))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)  # its INFO is every socket step
    try:
        config = BridgeConfig(
            args.amqp_url,
            args.redis_url,
            args.inference_url.rstrip("/"),
            args.queue,
            args.prefix,
            args.prefetch,
            args.result_ttl,
            retry=RetryPolicy(max_attempts=args.max_attempts),
        )
        with contextlib.ExitStack() as stack:
            if args.local_brokers is not None:
                rabbit, red = stack.enter_context(
                    brokers(args.local_brokers, _port(args.amqp_url), _port(args.redis_url))
                )
                log.info("local brokers up: %s %s", rabbit.url, red.url)
            _serve(Bridge(config, args.name))
    except ConfigError as error:
        print(f"queue_bridge.py: {error}", file=sys.stderr)
        return 2
    except (ServerError, pika.exceptions.AMQPConnectionError, redis.ConnectionError) as error:
        print(f"queue_bridge.py: {type(error).__name__}: {error}", file=sys.stderr)
        return 3
    return 0

"""Feed TorchServe from RabbitMQ: take a request, call the inference API, store the answer in Redis.

    producer --publish--> RabbitMQ queue --(prefetch N)--> bridge --HTTP--> TorchServe
    producer <--BLPOP---- Redis <--SET result + push "done"--- bridge --ack--> RabbitMQ

Every message ends, whatever it holds (``docs/queue-bridge.md`` has the table):

- a message is acknowledged only after its result is in Redis; a bridge that dies leaves its
  unacknowledged messages to RabbitMQ, which redelivers them to another bridge;
- 503 (job queue full), 408/429/502/504, a dead worker or an unreachable server are retried
  with backoff, within ``RetryPolicy.max_attempts`` calls, ``max_timeouts`` timeouts and
  ``max_worker_deaths`` worker deaths, counted in Redis across redeliveries and bridges; then
  the message ends as an error;
- a worker death answers every request of the dying batch, so it is charged to no one: the
  message is quarantined, and a quarantined message is sent alone (no other call of this
  bridge in flight to its model, ``ModelGate``); only deaths in quarantine count;
- any other 4xx/5xx, a message that is not a valid envelope (or is over
  ``max_message_bytes``), a request the HTTP client refuses to send, and spent retries: the
  error is stored as the result *and* the message is published to ``<queue>.dead``
  (confirmed) with the error in bounded headers, then acknowledged;
- while Redis is down every worker thread waits with growing backoff (``store_retry``), it
  neither calls TorchServe nor requeues; past that budget the message is dead-lettered with
  status 503 (no result could be stored);
- a dead-letter publish that RabbitMQ refuses or cannot route is tried again with backoff,
  ``dead_letter_attempts`` times in all, then the message is rejected (``basic_nack`` without
  requeue: RabbitMQ drops it, or routes it to the queue's own dead-letter exchange if the
  operator set one); its stored result stays. No delivery is left unsettled;
- results are keyed by request id and the first one stored wins (``SET NX``): a message,
  fresh or redelivered, whose id already has a result is acknowledged without calling
  TorchServe, and it never replaces that result;
- when the AMQP connection is lost (RabbitMQ stopped, a blocked connection past
  ``blocked_timeout``) the bridge stops its workers and exits (code 3 from the CLI; a
  supervisor restarts it); RabbitMQ redelivers what it held;
- at most ``prefetch`` messages are held (and in flight to TorchServe) per bridge.

    >>> config = BridgeConfig("amqp://guest:guest@127.0.0.1:5672/%2F", "redis://127.0.0.1:6379/0")
    >>> Bridge(config).run()  # doctest: +SKIP   (until stop() or SIGTERM)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import pika
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from servekit.errors import ConfigError, ServerError
from servekit.queue.brokers import brokers
from servekit.queue.messages import (
    DEFAULT_PREFIX,
    MAX_ENVELOPE_BYTES,
    MAX_TTL,
    InferenceRequest,
    MalformedMessage,
    QueueError,
    StoredResult,
    attempts_key,
    decode_request,
    done_key,
    header_text,
    result_key,
    valid_request_id,
)
from servekit.queue.retry import (
    TIMED_OUT,
    RetryPolicy,
    Verdict,
    classify,
    error_message,
    timed_out,
    worker_died,
)
from servekit.runtime.request_ids import HEADER

log = logging.getLogger("servekit.queue.bridge")

T = TypeVar("T")

DEFAULT_QUEUE = "inference"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_SUFFIX = ".dead"
MAX_PREFETCH = 1000
# x-error: errors can echo the input, and a header block over RabbitMQ's frame_max (128 KiB)
# closes the connection, so every bridge in turn would die on the same message.
MAX_HEADER_CHARS = 1000
MESSAGE_BYTES_RANGE = (1024, 512 * 1024 * 1024)  # RabbitMQ refuses messages over 512 MiB
# Redis down: waits of 0.1 s doubling to 5 s, 60 tries (about 3-4 minutes) per message.
STORE_RETRY = RetryPolicy(first_delay=0.1, max_delay=5.0, max_attempts=60)
INTERNAL_ERROR = "internal error in the queue bridge; see the bridge's log"
STOP_TIMEOUT = 30.0  # seconds from SIGTERM to a forced exit
EXIT_FORCED = 4  # stopped by the stop timeout or a second signal


def dead_letter_queue(queue: str) -> str:
    return queue + DEAD_SUFFIX


def declare_queues(channel: Any, queue: str) -> None:
    """The request queue and its dead-letter queue, both durable (producers declare them too)."""
    channel.queue_declare(queue=queue, durable=True)
    channel.queue_declare(queue=dead_letter_queue(queue), durable=True)


@dataclass(frozen=True)
class BridgeConfig:
    """Where to read, where to call, where to write, how much to hold and how long to try."""

    amqp_url: str
    redis_url: str
    inference_url: str = "http://127.0.0.1:8080"
    queue: str = DEFAULT_QUEUE
    prefix: str = DEFAULT_PREFIX
    prefetch: int = 8
    result_ttl: int = 3600
    http_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # calls to TorchServe
    store_retry: RetryPolicy = STORE_RETRY  # Redis writes and reads
    max_message_bytes: int = MAX_ENVELOPE_BYTES
    dead_letter_attempts: int = 5  # publishes of one dead letter before the message is rejected
    # Under a memory or disk alarm RabbitMQ stops reading from publishing connections: a dead
    # letter publish would wait for ever. Past this many seconds blocked, pika closes the
    # connection; the bridge exits and RabbitMQ redelivers what it held.
    blocked_timeout: float = 30.0

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
        low, high = MESSAGE_BYTES_RANGE
        if not low <= self.max_message_bytes <= high:
            raise ConfigError(
                f"max_message_bytes is {self.max_message_bytes}; expected {low}-{high} "
                f"(default {MAX_ENVELOPE_BYTES}: TorchServe's max_request_size, base64-encoded)"
            )
        if not 0 < self.http_timeout <= 3600 or not 0 < self.blocked_timeout <= 3600:
            raise ConfigError(
                f"http_timeout is {self.http_timeout}, blocked_timeout {self.blocked_timeout}; "
                "expected seconds in (0, 3600]"
            )
        if self.dead_letter_attempts < 1:
            raise ConfigError(
                f"dead_letter_attempts is {self.dead_letter_attempts}; expected at least 1"
            )


@dataclass(frozen=True)
class Outcome:
    """What the connection thread does with one delivery once its work is over."""

    verdict: Verdict  # DONE: ack; DEAD: publish to the dead-letter queue, then ack; RETRY: requeue
    request_id: str | None = None
    error: str | None = None
    status: int | None = None


@dataclass(frozen=True)
class Tries:
    """A request's calls so far (this one included), worker deaths and last retryable answer."""

    calls: int
    deaths: int = 0  # worker deaths while quarantined (sent alone): the ones that count
    status: int | None = None
    error: str | None = None
    timeouts: int = 0
    quarantined: bool = False  # a worker died on a batch it was in: from now on it goes alone

    @classmethod
    def from_hash(cls, fields: Mapping[bytes, bytes]) -> Tries:
        status = fields.get(b"status")
        error = fields.get(b"error")
        return cls(
            int(fields.get(b"calls", 0)),
            int(fields.get(b"deaths", 0)),
            None if status is None else int(status),
            None if error is None else error.decode("utf-8", "replace"),
            int(fields.get(b"timeouts", 0)),
            fields.get(b"quarantined", b"0") != b"0",
        )

    def spent(self, policy: RetryPolicy, calls: int) -> bool:
        return (
            calls >= policy.max_attempts
            or self.deaths >= policy.max_worker_deaths
            or self.timeouts >= policy.max_timeouts
        )


class Stopping(QueueError):
    """The bridge is stopping: the message goes back to the queue as it is."""


class StoreUnavailable(QueueError):
    """Redis did not answer within the bridge's ``store_retry`` budget."""


class ModelGate:
    """Per model, a readers/writer gate: normal calls share it, quarantined calls hold it alone.

    TorchServe answers every request of a batch whose worker died "Worker died.", so a death
    says which batch, not which message. A call made while holding the gate alone shares its
    batch with no other call of this bridge (other bridges and clients may still join it).
    A waiting exclusive call goes before new shared ones, so it is never starved.
    """

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._changed = threading.Condition()
        self._shared: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()  # exclusive calls waiting
        self._exclusive: set[str] = set()

    @contextlib.contextmanager
    def hold(self, model: str, exclusive: bool) -> Iterator[None]:
        model = model.split("/")[0]  # every version of a model: conservative
        with self._changed:
            self._waiting[model] += exclusive
            try:
                while not self._free(model, exclusive):
                    if self._stopping.is_set():
                        raise Stopping("the bridge is stopping")
                    self._changed.wait(0.5)
            finally:
                self._waiting[model] -= exclusive
            if exclusive:
                self._exclusive.add(model)
            else:
                self._shared[model] += 1
        try:
            yield
        finally:
            with self._changed:
                if exclusive:
                    self._exclusive.discard(model)
                else:
                    self._shared[model] -= 1
                self._changed.notify_all()

    def _free(self, model: str, exclusive: bool) -> bool:
        if model in self._exclusive:
            return False
        return self._shared[model] == 0 if exclusive else self._waiting[model] == 0

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


def error_body(status: int, kind: str, message: str) -> bytes:
    """An error in the handlers' JSON shape, for errors the bridge finds itself."""
    return json.dumps({"code": status, "type": kind, "message": message}).encode()


def dead_letter_headers(outcome: Outcome, bridge: str) -> dict[str, Any]:
    """The dead letter's headers: bounded and encodable whatever the error echoes."""
    return {
        "x-error": header_text(outcome.error or "", MAX_HEADER_CHARS),
        "x-status": outcome.status or 0,
        "x-request-id": outcome.request_id or "",
        "x-bridge": header_text(bridge, 200),
    }


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
        self._gate = ModelGate(self._stopping)
        self._local = threading.local()
        # No retries inside redis-py: the bridge's own backoff (store_retry) is the only one.
        self._redis = redis.Redis.from_url(
            config.redis_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        self._connection: Any = None
        self._channel: Any = None
        self._in_flight = 0  # deliveries taken and not yet settled (connection thread only)
        self.ready = threading.Event()

    # --- the connection thread -------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop()``; in-flight messages are finished (or requeued) before return."""
        parameters = pika.URLParameters(self.config.amqp_url)
        if parameters.blocked_connection_timeout is None:  # the URL's own setting wins
            parameters.blocked_connection_timeout = self.config.blocked_timeout
        self._connection = pika.BlockingConnection(parameters)
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
                try:
                    if not self._stopping.is_set():
                        self._channel.start_consuming()
                    while self._in_flight:  # let workers hand back their outcomes
                        self._connection.process_data_events(time_limit=0.05)
                except BaseException:
                    # The connection is gone (or we are going): its deliveries go back to the
                    # queue, so workers in backoff must not keep the process alive for minutes.
                    self._stop_workers()
                    raise
        finally:
            if self._connection.is_open:
                self._connection.close()
            self._redis.close()

    def stop(self) -> None:
        """Ask ``run`` to stop (any thread, or a signal handler)."""
        self._stop_workers()
        connection, channel = self._connection, self._channel
        if connection is not None and channel is not None and connection.is_open:
            connection.add_callback_threadsafe(channel.stop_consuming)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _stop_workers(self) -> None:
        self._stopping.set()
        self._gate.wake()

    def _on_message(
        self, pool: ThreadPoolExecutor, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        self._in_flight += 1
        pool.submit(self._work, method.delivery_tag, method.redelivered, properties, body)

    def _finish(
        self, tag: int, properties: Any, body: bytes, outcome: Outcome, refusals: int = 0
    ) -> None:
        try:
            settled = self._settle(tag, properties, body, outcome, refusals)
        except pika.exceptions.AMQPError:
            # The channel is gone, so is the delivery: RabbitMQ redelivers the message and its
            # stored result makes the second pass a no-op.
            log.exception("%s could not settle delivery %s", self.name, tag)
            settled = True
        if settled:
            self._in_flight -= 1

    def _settle(
        self, tag: int, properties: Any, body: bytes, outcome: Outcome, refusals: int
    ) -> bool:
        """Ack, dead-letter then ack, or requeue; False while a refused dead letter waits."""
        if outcome.verdict is Verdict.RETRY:
            self._channel.basic_nack(tag, requeue=True)
            self._count("requeued")
            return True
        if outcome.verdict is Verdict.DEAD:
            try:
                self._dead_letter(properties, body, outcome)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
                return self._refused(tag, properties, body, outcome, refusals + 1, error)
        self._channel.basic_ack(tag)
        return True

    def _refused(
        self,
        tag: int,
        properties: Any,
        body: bytes,
        outcome: Outcome,
        refusals: int,
        error: pika.exceptions.AMQPError,
    ) -> bool:
        """Try a refused dead letter again later; after the last try, reject the message."""
        self._count("dead_letter_refused")
        why = f"{type(error).__name__}: {error}"
        if self._stopping.is_set():
            self._channel.basic_nack(tag, requeue=True)  # the next bridge tries again
            return True
        if refusals < self.config.dead_letter_attempts:
            delay = self.config.retry.delay(refusals)
            log.warning("%s: dead letter refused (%s); again in %.2f s", self.name, why, delay)
            retry = functools.partial(self._finish, tag, properties, body, outcome, refusals)
            self._connection.call_later(delay, retry)  # the connection keeps serving meanwhile
            return False
        log.error(
            "%s: dead letter of %s refused %d times (%s); rejecting the message (dropped, or "
            "routed to the queue's own dead-letter exchange); its stored result stays",
            self.name,
            outcome.request_id,
            refusals,
            why,
        )
        self._channel.basic_nack(tag, requeue=False)
        self._count("rejected")
        return True

    def _dead_letter(self, properties: Any, body: bytes, outcome: Outcome) -> None:
        self._channel.basic_publish(
            exchange="",
            routing_key=dead_letter_queue(self.config.queue),
            body=body,
            properties=pika.BasicProperties(
                content_type=properties.content_type,
                message_id=outcome.request_id or properties.message_id,
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=dead_letter_headers(outcome, self.name),
            ),
            mandatory=True,  # an unroutable dead letter raises UnroutableError, never vanishes
        )
        self._count("dead")
        log.info(
            "%s dead-lettered %s: %s", self.name, outcome.request_id, (outcome.error or "")[:200]
        )

    # --- worker threads ------------------------------------------------------------------------

    def _work(self, tag: int, redelivered: bool, properties: Any, body: bytes) -> None:
        outcome = self.process(body, properties.message_id, redelivered)
        try:
            self._connection.add_callback_threadsafe(
                functools.partial(self._finish, tag, properties, body, outcome)
            )
        except pika.exceptions.AMQPError:  # the connection is gone: RabbitMQ redelivers it
            log.warning("%s: connection closed; %s goes back to the queue", self.name, tag)

    def process(self, raw: bytes, message_id: str | None, redelivered: bool) -> Outcome:
        """Everything but the AMQP settlement: decode, call TorchServe (with retries), store.

        Never raises: every message gets an outcome, and only a stopping bridge requeues.
        """
        request_id = valid_request_id(message_id)
        try:
            try:
                request = decode_request(raw, message_id, self.config.max_message_bytes)
            except MalformedMessage as error:
                request_id = error.request_id
                return self._malformed(error)
            request_id = request.id
            return self._serve(request, redelivered)
        except Stopping:
            return Outcome(Verdict.RETRY, request_id)
        except StoreUnavailable as error:
            self._count("store_unavailable")
            return Outcome(Verdict.DEAD, request_id, str(error), 503)
        except Exception:  # one place catches: a bug ends the message, never loops on it
            log.exception("%s: internal error on request %s", self.name, request_id)
            return self._internal_error(request_id)

    def _serve(self, request: InferenceRequest, redelivered: bool) -> Outcome:
        stored = self._stored(request.id)
        if stored is not None:  # done before (a crash, a lost ack, a repeated id): not twice
            self._count("replayed" if redelivered else "duplicate")
            return self._outcome(stored)
        result = self._call_with_retries(request)
        if not self._store(result, request.ttl or self.config.result_ttl):
            # Another message with this id was answered meanwhile: its answer stands.
            self._count("duplicate")
            return self._outcome(self._stored(request.id) or result)
        self._count("done" if result.ok else "failed")
        return self._outcome(result)

    def _outcome(self, result: StoredResult) -> Outcome:
        verdict = Verdict.DONE if result.ok else Verdict.DEAD
        return Outcome(verdict, result.id, result.error, result.status)

    def _error_result(
        self, request_id: str, model: str, status: int, kind: str, message: str, attempts: int
    ) -> StoredResult:
        body = error_body(status, kind, message)
        return StoredResult(
            request_id, model, status, "application/json", body, message, attempts, self.name
        )

    def _malformed(self, error: MalformedMessage) -> Outcome:
        self._count("malformed")
        message = str(error)
        if error.request_id is not None:
            result = self._error_result(error.request_id, "", 400, "MalformedMessage", message, 0)
            self._store(result, self.config.result_ttl)
        return Outcome(Verdict.DEAD, error.request_id, message, 400)

    def _internal_error(self, request_id: str | None) -> Outcome:
        self._count("internal_errors")
        if request_id is not None:
            result = self._error_result(request_id, "", 500, "InternalError", INTERNAL_ERROR, 0)
            # Best effort: whatever stops the store (Redis away, stopping, the same bug), the
            # message is still dead-lettered, so its delivery is always settled.
            with contextlib.suppress(Exception):
                self._store(result, self.config.result_ttl)
        return Outcome(Verdict.DEAD, request_id, INTERNAL_ERROR, 500)

    def _call_with_retries(self, request: InferenceRequest) -> StoredResult:
        """TorchServe's final answer, or the last error once the request's tries are spent."""
        policy = self.config.retry
        while True:
            tries = self._begin_attempt(request.id)
            if tries.spent(policy, tries.calls - 1):
                return self._exhausted(request, tries.calls - 1, tries)  # spent before
            if tries.quarantined:
                self._count("quarantined_calls")
            with self._gate.hold(request.model, exclusive=tries.quarantined):
                status, content_type, body = self._call(request)
            if classify(status, body) is not Verdict.RETRY:
                error = None if 200 <= status < 300 else error_message(body)
                return StoredResult(
                    request.id, request.model, status, content_type, body, error, tries.calls,
                    self.name,
                )  # fmt: skip
            tries = self._record_failure(request.id, status, body, alone=tries.quarantined)
            if tries.spent(policy, tries.calls):
                return self._exhausted(request, tries.calls, tries)
            self._count("retries")
            if self._stopping.wait(policy.delay(tries.calls)):
                raise Stopping(f"{self.name} is stopping")

    def _exhausted(self, request: InferenceRequest, calls: int, tries: Tries) -> StoredResult:
        policy = self.config.retry
        last = tries.error or "none recorded (a bridge stopped or died during the call)"
        message = (
            f"gave up after {calls} attempts, {tries.deaths} of them ending in a worker death "
            f"while sent alone, {tries.timeouts} in a timeout (limits: {policy.max_attempts} "
            f"attempts, {policy.max_worker_deaths} worker deaths, {policy.max_timeouts} "
            f"timeouts); last answer: {tries.status or 'none'} {last}"
        )
        self._count("exhausted")
        log.warning("%s: %s %s", self.name, request.id, message)
        status = tries.status or 503
        return self._error_result(
            request.id, request.model, status, "RetriesExhausted", message, calls
        )

    def _call(self, request: InferenceRequest) -> tuple[int, str, bytes]:
        url = f"{self.config.inference_url}/predictions/{quote(request.model, safe='/')}"
        try:
            response = self._session().post(
                url,
                data=request.body,
                headers={"Content-Type": request.content_type, HEADER: request.id},
                timeout=self.config.http_timeout,
            )
        except requests.exceptions.ReadTimeout:  # it reached TorchServe and is still running there
            message = f"TorchServe did not answer within {self.config.http_timeout} s"
            return TIMED_OUT, "application/json", error_body(TIMED_OUT, "Timeout", message)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as error:  # unreachable, timed out or cut off: transient
            return 503, "text/plain", f"{type(error).__name__}: {error}".encode()
        except (requests.RequestException, ValueError) as error:
            # The client refuses to send it (a header it cannot encode): the message's fault.
            message = f"the request cannot be sent over HTTP: {type(error).__name__}: {error}"
            return 400, "application/json", error_body(400, "UnsendableRequest", message)
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return response.status_code, content_type, response.content

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    # --- Redis ---------------------------------------------------------------------------------

    def _redis_call(self, what: str, action: Callable[[redis.Redis], T]) -> T:
        """``action``, tried with growing waits while Redis is away (never a busy loop)."""
        policy, attempt = self.config.store_retry, 1
        while True:
            try:
                return action(self._redis)
            except redis.RedisError as error:
                self._count("redis_errors")
                log.warning(
                    "%s: Redis failed to %s (attempt %d of %d): %s",
                    self.name, what, attempt, policy.max_attempts, error,
                )  # fmt: skip
                if attempt >= policy.max_attempts:
                    raise StoreUnavailable(
                        f"Redis did not {what} in {attempt} attempts ({error}); "
                        "the result could not be stored"
                    ) from error
            if self._stopping.wait(policy.delay(attempt)):
                raise Stopping(f"{self.name} is stopping")
            attempt += 1

    def _store(self, result: StoredResult, ttl: int) -> bool:
        """SET NX the result and push its wake-up token, atomically; the attempt count goes.

        False when the id already had a result: the first answer wins, it is never replaced.
        """
        prefix = self.config.prefix

        def write(client: redis.Redis) -> bool:
            with client.pipeline(transaction=True) as pipe:
                pipe.set(result_key(prefix, result.id), result.encode(), ex=ttl, nx=True)
                pipe.delete(done_key(prefix, result.id))  # one token, however many passes
                pipe.rpush(done_key(prefix, result.id), b"1")
                pipe.expire(done_key(prefix, result.id), ttl)
                pipe.delete(attempts_key(prefix, result.id))
                return pipe.execute()[0] is not None

        return self._redis_call(f"store the result of {result.id}", write)

    def _stored(self, request_id: str) -> StoredResult | None:
        key = result_key(self.config.prefix, request_id)
        raw = self._redis_call(f"read {key}", lambda client: client.get(key))
        if raw is None:
            return None
        try:
            return StoredResult.decode(raw)
        except (ValueError, TypeError, KeyError):  # not ours or damaged: answer it afresh
            log.warning(
                "%s: %s holds no readable result; serving the request again", self.name, key
            )
            return None

    def _begin_attempt(self, request_id: str) -> Tries:
        """Count one more call to TorchServe for ``request_id``, whichever bridge makes it."""
        key = attempts_key(self.config.prefix, request_id)

        def count(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "calls", 1)
                pipe.expire(key, MAX_TTL)
                pipe.hgetall(key)
                return pipe.execute()[-1]

        return Tries.from_hash(self._redis_call(f"count the attempts of {request_id}", count))

    def _record_failure(self, request_id: str, status: int, body: bytes, alone: bool) -> Tries:
        """Keep the last retryable answer; count a timeout, or a worker death when sent alone.

        A death in a shared batch is charged to no one: it quarantines the request instead.
        """
        key = attempts_key(self.config.prefix, request_id)
        died = worker_died(status, body)

        def record(client: redis.Redis) -> Any:
            with client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"status": status, "error": error_message(body)})
                pipe.hset(key, "quarantined", int(died or alone))
                pipe.hincrby(key, "deaths", int(died and alone))
                pipe.hincrby(key, "timeouts", int(timed_out(status)))
                pipe.expire(key, MAX_TTL)
                pipe.hgetall(key)
                return pipe.execute()[-1]

        return Tries.from_hash(self._redis_call(f"record a failure of {request_id}", record))

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="servekit bridge",
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
        help="calls per message on 503/unreachable/dead worker, across redeliveries, before "
        "it ends in a stored error and a dead letter (30)",
    )
    parser.add_argument(
        "--max-worker-deaths",
        type=int,
        default=RetryPolicy.max_worker_deaths,
        help="'worker died' answers to a message sent alone (in quarantine, after a first "
        "death in a shared batch) before it ends the same way (3)",
    )
    parser.add_argument(
        "--max-timeouts",
        type=int,
        default=RetryPolicy.max_timeouts,
        help="calls that outlive --http-timeout (or answer 504) before the message ends in a "
        "stored 504 and a dead letter (2); each copy keeps running in TorchServe",
    )
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=BridgeConfig.http_timeout,
        help="seconds to wait for TorchServe's answer (60); keep it above responseTimeout",
    )
    parser.add_argument(
        "--blocked-timeout",
        type=float,
        default=BridgeConfig.blocked_timeout,
        help="seconds RabbitMQ may block the connection (memory or disk alarm) before the "
        "bridge exits with code 3 and its messages are redelivered (30)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=STOP_TIMEOUT,
        help="seconds after SIGTERM/Ctrl-C before the bridge exits whatever it is doing "
        f"(held messages are redelivered) ({STOP_TIMEOUT:g}); a second signal exits at once",
    )
    parser.add_argument(
        "--store-attempts",
        type=int,
        default=STORE_RETRY.max_attempts,
        help="Redis tries per step, waits growing to 5 s (60: about 3-4 minutes of outage), "
        "before the message is dead-lettered unanswered",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=MAX_ENVELOPE_BYTES,
        help=f"larger envelopes are dead-lettered unread ({MAX_ENVELOPE_BYTES})",
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


def _force_exit(bridge: Bridge, why: str) -> None:
    """Leave now: RabbitMQ redelivers the unacknowledged messages when the connection drops."""
    log.error("%s: %s; exiting without waiting (held messages are redelivered)", bridge.name, why)
    logging.shutdown()
    os._exit(EXIT_FORCED)


def _serve(bridge: Bridge, stop_timeout: float = STOP_TIMEOUT) -> None:
    def on_signal(signum: int, frame: object) -> None:
        if bridge.stopping:
            _force_exit(bridge, f"signal {signum} again")
        log.info("%s: signal %d, stopping (at most %g s)", bridge.name, signum, stop_timeout)
        bridge.stop()
        # A stop can wait on what the bridge does not control (a connection RabbitMQ blocks, a
        # slow call): past the timeout the process leaves anyway.
        watchdog = threading.Timer(
            stop_timeout, _force_exit, (bridge, f"not stopped {stop_timeout:g} s after a signal")
        )
        watchdog.daemon = True
        watchdog.start()

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
            http_timeout=args.http_timeout,
            retry=RetryPolicy(
                max_attempts=args.max_attempts,
                max_worker_deaths=args.max_worker_deaths,
                max_timeouts=args.max_timeouts,
            ),
            store_retry=dataclasses.replace(STORE_RETRY, max_attempts=args.store_attempts),
            max_message_bytes=args.max_message_bytes,
            blocked_timeout=args.blocked_timeout,
        )
        if args.stop_timeout <= 0:
            raise ConfigError(f"--stop-timeout is {args.stop_timeout}; expected seconds above 0")
        with contextlib.ExitStack() as stack:
            if args.local_brokers is not None:
                rabbit, red = stack.enter_context(
                    brokers(args.local_brokers, _port(args.amqp_url), _port(args.redis_url))
                )
                log.info("local brokers up: %s %s", rabbit.url, red.url)
            _serve(Bridge(config, args.name), args.stop_timeout)
    except ConfigError as error:
        print(f"servekit bridge: {error}", file=sys.stderr)
        return 2
    except (ServerError, pika.exceptions.AMQPError, redis.ConnectionError) as error:
        # RabbitMQ gone or the connection blocked too long: what the bridge held is redelivered;
        # a supervisor (systemd Restart=, a Kubernetes Deployment) starts it again.
        print(f"servekit bridge: {type(error).__name__}: {error}", file=sys.stderr)
        return 3
    return 0

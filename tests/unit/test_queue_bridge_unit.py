"""The bridge's parts that need no broker: dead-letter headers, config checks, unsendable calls."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from servekit.errors import ConfigError
from servekit.queue.bridge import (
    INTERNAL_ERROR,
    MAX_HEADER_CHARS,
    Bridge,
    BridgeConfig,
    ModelGate,
    Outcome,
    Stopping,
    Tries,
    dead_letter_headers,
)
from servekit.queue.messages import InferenceRequest
from servekit.queue.retry import RetryPolicy, Verdict, classify, timed_out

CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens; a connect would be refused


def bridge() -> Bridge:
    return Bridge(BridgeConfig("amqp://h:1/%2F", "redis://127.0.0.1:9/0", CLOSED), "unit")


def test_dead_letter_headers_are_bounded_and_encodable() -> None:
    """An error echoing a huge input once made a header over RabbitMQ's frame size."""
    outcome = Outcome(Verdict.DEAD, "r-1", "bad value " + "x" * 1_000_000 + "\ud800", 400)
    headers = dead_letter_headers(outcome, "bridge-1")
    assert len(headers["x-error"]) == MAX_HEADER_CHARS and headers["x-error"].endswith("...")
    assert headers["x-request-id"] == "r-1" and headers["x-status"] == 400
    for value in headers.values():
        str(value).encode("utf-8")
    short = dead_letter_headers(Outcome(Verdict.DEAD, None, "lone \udcff", None), "b")
    assert short == {"x-error": "lone \\udcff", "x-status": 0, "x-request-id": "", "x-bridge": "b"}


@pytest.mark.parametrize(
    "content_type",
    ["application/json\r\nX-Injected: 1", "text/plain; charset=€", " application/json"],
)
def test_a_request_http_refuses_to_send_is_a_client_error_not_a_503(content_type: str) -> None:
    """It used to come back as 503 (retried for ever): the client refused, nothing was sent."""
    status, content_type_out, body = bridge()._call(
        InferenceRequest("r-1", "iris", b"{}", content_type)
    )
    assert status == 400 and content_type_out == "application/json"
    assert json.loads(body)["type"] == "UnsendableRequest"
    assert classify(status, body) is Verdict.DEAD


def test_an_unreachable_server_is_transient() -> None:
    status, _, body = bridge()._call(InferenceRequest("r-1", "iris", b"{}", "application/json"))
    assert status == 503 and classify(status, body) is Verdict.RETRY


def test_tries_read_from_the_redis_hash() -> None:
    assert Tries.from_hash({}) == Tries(0)
    fields = {b"calls": b"4", b"deaths": b"2", b"status": b"500", b"error": b"Worker died."}
    assert Tries.from_hash(fields) == Tries(4, 2, 500, "Worker died.")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_message_bytes": 10}, "max_message_bytes is 10; expected 1024-"),
        ({"dead_letter_attempts": 0}, "dead_letter_attempts is 0"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, int], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        BridgeConfig("amqp://h:1/%2F", "redis://h:2/0", **kwargs)  # type: ignore[arg-type]


def offline_bridge(store_attempts: int) -> Bridge:
    """A bridge whose Redis refuses connections at once (nothing listens on the port)."""
    store_retry = RetryPolicy(first_delay=0.02, max_delay=0.08, max_attempts=store_attempts)
    cfg = BridgeConfig("amqp://h:1/%2F", "redis://127.0.0.1:9/0", CLOSED, store_retry=store_retry)
    return Bridge(cfg, "offline")


def test_redis_down_means_waiting_with_backoff_then_a_dead_letter() -> None:
    """The bridge used to requeue at once while Redis was down: a busy loop on one core."""
    bridge, raw = offline_bridge(5), InferenceRequest("r-1", "iris", b"{}").encode()
    started = time.monotonic()
    outcome = bridge.process(raw, "r-1", redelivered=False)
    waited = time.monotonic() - started
    assert outcome.verdict is Verdict.DEAD and outcome.status == 503
    assert outcome.request_id == "r-1" and "Redis did not" in (outcome.error or "")
    assert bridge.stats["redis_errors"] == 5 and bridge.stats.get("requeued", 0) == 0
    assert waited >= (0.02 + 0.04 + 0.08 + 0.08) / 2  # at least the fixed half of each wait


def test_an_unexpected_error_ends_the_message_instead_of_requeueing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception the bridge did not foresee used to requeue the message: at once, for ever."""
    bridge = offline_bridge(1)

    def broken(request: InferenceRequest, redelivered: bool) -> Outcome:
        raise RuntimeError("a bug")

    monkeypatch.setattr(bridge, "_serve", broken)
    outcome = bridge.process(InferenceRequest("r-2", "iris", b"").encode(), None, False)
    assert outcome == Outcome(Verdict.DEAD, "r-2", INTERNAL_ERROR, 500)
    assert bridge.stats["internal_errors"] == 1


def test_tries_know_quarantine_and_timeouts() -> None:
    fields = {b"calls": b"2", b"timeouts": b"1", b"quarantined": b"1"}
    tries = Tries.from_hash(fields)
    assert tries.quarantined and tries.timeouts == 1 and tries.deaths == 0
    policy = RetryPolicy(max_attempts=30, max_worker_deaths=3, max_timeouts=2)
    assert not tries.spent(policy, tries.calls)
    assert Tries(3, timeouts=2).spent(policy, 3)  # a slow request: 2 timeouts, not 30 calls
    assert Tries(5, deaths=3).spent(policy, 5) and Tries(30).spent(policy, 30)


def test_a_call_that_outlives_the_http_timeout_is_a_504() -> None:
    """It used to be a 503, retried up to 30 times while every copy kept running."""
    with socket.socket() as listener:  # accepts (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        cfg = BridgeConfig("amqp://h:1/%2F", "redis://h:2/0", f"http://127.0.0.1:{port}",
                           http_timeout=0.2)  # fmt: skip
        status, _, body = Bridge(cfg, "unit")._call(InferenceRequest("r-1", "iris", b"{}"))
    assert status == 504 and json.loads(body)["type"] == "Timeout"
    assert timed_out(status) and classify(status, body) is Verdict.RETRY


def hold_in_thread(
    gate: ModelGate, model: str, exclusive: bool, log: list[str]
) -> Callable[[], None]:
    """Enter the gate in a thread; returns a function that lets it leave and joins it."""
    leave, entered = threading.Event(), threading.Event()

    def run() -> None:
        with gate.hold(model, exclusive):
            log.append(f"{'x' if exclusive else 's'}-in")
            entered.set()
            leave.wait(5)
        log.append(f"{'x' if exclusive else 's'}-out")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish() -> None:
        leave.set()
        thread.join(5)

    finish.entered = entered  # type: ignore[attr-defined]
    return finish


def test_a_quarantined_call_waits_until_it_is_alone_and_goes_before_new_calls() -> None:
    """A worker death once dead-lettered every message of the batch, not only the killer."""
    gate, log = ModelGate(threading.Event()), list[str]()
    first = hold_in_thread(gate, "killer", False, log)
    assert first.entered.wait(5)  # type: ignore[attr-defined]
    alone = hold_in_thread(gate, "killer/1.0", True, log)  # any version of the same model
    time.sleep(0.2)  # would it get in while a shared call is in flight? (it must not)
    later = hold_in_thread(gate, "killer", False, log)
    other = hold_in_thread(gate, "iris", False, log)  # other models are not held up
    assert other.entered.wait(5)  # type: ignore[attr-defined]
    assert log == ["s-in", "s-in"]
    first()
    assert alone.entered.wait(5)  # type: ignore[attr-defined]
    time.sleep(0.2)
    assert not later.entered.is_set()  # type: ignore[attr-defined]
    alone()
    assert later.entered.wait(5)  # type: ignore[attr-defined]
    later(), other()


def test_a_stopping_bridge_leaves_the_gate_queue() -> None:
    stopping = threading.Event()
    gate = ModelGate(stopping)
    with gate.hold("m", exclusive=False):
        stopping.set()
        gate.wake()
        with pytest.raises(Stopping), gate.hold("m", exclusive=True):
            pass

"""The bridge's parts that need no broker: dead-letter headers, config checks, unsendable calls."""

from __future__ import annotations

import json
import time

import pytest

from servekit.errors import ConfigError
from servekit.queue_bridge import (
    INTERNAL_ERROR,
    MAX_HEADER_CHARS,
    Bridge,
    BridgeConfig,
    Outcome,
    Tries,
    dead_letter_headers,
)
from servekit.queue_messages import InferenceRequest
from servekit.queue_retry import RetryPolicy, Verdict, classify

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

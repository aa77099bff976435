"""Which answers are retried, dead-lettered or done, and the backoff between tries."""

from __future__ import annotations

import json
import random

import pytest

from servekit.errors import ConfigError
from servekit.queue.bridge import BridgeConfig
from servekit.queue.retry import (
    MESSAGE_CHARS,
    RetryPolicy,
    Verdict,
    classify,
    error_message,
    timed_out,
    worker_died,
)


def ts_error(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "type": "X", "message": message}).encode()


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"{}", Verdict.DONE),
        (201, b"", Verdict.DONE),
        (400, ts_error(400, "feature 2 is 'three'"), Verdict.DEAD),
        (404, ts_error(404, "Model not found: nope"), Verdict.DEAD),
        (413, b"too big", Verdict.DEAD),
        (415, ts_error(415, "not an image"), Verdict.DEAD),
        (503, ts_error(503, "Model iris has no worker to serve inference request"), Verdict.RETRY),
        (502, b"", Verdict.RETRY),
        (504, b"", Verdict.RETRY),
        (408, b"", Verdict.RETRY),
        (429, b"", Verdict.RETRY),
        (500, ts_error(500, "Worker died."), Verdict.RETRY),
        (507, ts_error(507, "Worker died."), Verdict.RETRY),
        (500, ts_error(500, "Internal error while serving this request"), Verdict.DEAD),
    ],
)
def test_classify(status: int, body: bytes, verdict: Verdict) -> None:
    assert classify(status, body) is verdict


def test_error_message_prefers_the_json_message() -> None:
    assert error_message(ts_error(400, "bad input")) == "bad input"
    assert error_message(b"plain text") == "plain text"
    assert error_message(b'["no", "message"]') == '["no", "message"]'


@pytest.mark.parametrize(
    "body", [b"[" * 50_000, b'{"message": ' + b"9" * 5000 + b"}", ts_error(500, "x" * 100_000)]
)
def test_error_message_of_any_body_is_bounded_text(body: bytes) -> None:
    """A deep or over-long error body once raised RecursionError/ValueError in the bridge."""
    assert len(error_message(body)) <= MESSAGE_CHARS
    assert classify(500, body) is Verdict.DEAD


def test_worker_died_needs_a_5xx_saying_so() -> None:
    assert worker_died(500, ts_error(500, "Worker died.")) and worker_died(507, b"Worker died.")
    assert not worker_died(400, ts_error(400, "worker died")) and not worker_died(500, b"oops")


def test_backoff_grows_and_stays_within_the_cap() -> None:
    policy, rng = RetryPolicy(first_delay=0.1, max_delay=1.0), random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(1.0, 0.1 * 2 ** (attempt - 1))
        assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"first_delay": 0}, "expected 0 < first <= max"),
        ({"first_delay": 3, "max_delay": 2}, "expected 0 < first <= max"),
        ({"max_attempts": 0}, "max_attempts is 0"),
        ({"max_worker_deaths": 0}, "max_worker_deaths is 0"),
        ({"max_timeouts": 0}, "max_timeouts is 0"),
    ],
)
def test_bad_retry_policies_are_refused(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"prefetch": 0}, "prefetch x bridges at or below TorchServe's job_queue_size"),
        ({"result_ttl": 0}, "result_ttl is 0"),
        ({"queue": "requests.dead"}, "not ending in '.dead'"),
        ({"inference_url": "127.0.0.1:8080"}, "inference_url is '127.0.0.1:8080'; expected a URL"),
        ({"http_timeout": 0}, "http_timeout is 0"),
        ({"blocked_timeout": -1}, "blocked_timeout -1"),
    ],
)
def test_bad_bridge_configs_are_refused(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        BridgeConfig("amqp://h:1/%2F", "redis://h:2/0", **kwargs)  # type: ignore[arg-type]


def test_only_504_counts_as_a_timeout() -> None:
    assert timed_out(504) and not timed_out(503) and not timed_out(500)
    assert classify(504, b"{}") is Verdict.RETRY

"""The queue message codec under fuzzing: for any bytes, an envelope or MalformedMessage.

``decode_request`` reads what any producer (or attacker) put on the queue. Its promise: it
returns an ``InferenceRequest`` or raises ``MalformedMessage``, nothing else, quickly; an
error names at most a bounded piece of the input; a request it returns is safe to send (its
content type is a valid HTTP header) and to key Redis with (its id passes the id check).
Kept inputs: ``tests/corpus/fuzz/queue_messages/``.
"""

from __future__ import annotations

import base64
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.queue.messages import (
    CONTENT_TYPE,
    FIELDS,
    MODEL_NAME,
    REQUEST_ID,
    InferenceRequest,
    MalformedMessage,
    decode_request,
    header_text,
)
from tests.fuzz.kept import corpus

SECONDS = 1.0  # per input, on a loaded 2-core machine; the decode of 10 MiB takes ~0.1 s
MAX_ERROR_CHARS = 1000  # an error message never echoes more than this

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# What plain random bytes rarely reach: deep nesting, long number literals, header breakers.
nested = st.builds(
    lambda depth, opener: opener * depth, st.integers(1, 200_000), st.sampled_from(["[", '{"a":'])
).map(str.encode)
long_numbers = st.builds(
    lambda digits, key: f'{{"id": "n-1", "{key}": {"9" * digits}}}'.encode(),
    st.integers(1, 20_000),
    st.sampled_from(["ttl", "v", "body", "model"]),
)
content_types = st.builds(
    lambda a, b: f"{a}/{b}", st.text(max_size=12), st.text(max_size=12)
) | st.sampled_from(["application/json", "image/png", "a/b\r\nX-Evil: 1", "text/plain; x=€"])
field_values = st.one_of(
    json_values,
    st.from_regex(REQUEST_ID, fullmatch=True),
    st.from_regex(MODEL_NAME, fullmatch=True),
    content_types,
    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
    st.integers(min_value=-(10**40), max_value=10**40),
)
valid_fields = st.fixed_dictionaries(
    {
        "id": st.from_regex(REQUEST_ID, fullmatch=True),
        "model": st.from_regex(MODEL_NAME, fullmatch=True),
        "body": st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
    },
    optional={"v": st.just(1), "content_type": st.just("application/json"), "ttl": st.just(60)},
)
# Any shape at all, and a valid envelope with one field replaced: the second reaches the
# checks behind the first failure (an id, a model and a body must all be right first).
envelopes = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=8),
    st.builds(
        lambda fields, key, value: fields | {key: value},
        valid_fields,
        st.sampled_from(FIELDS),
        field_values,
    ),
).map(lambda fields: json.dumps(fields).encode())


def check_promise(raw: bytes, fallback_id: str | None = None) -> None:
    """The property of every target below."""
    started = time.perf_counter()
    try:
        request = decode_request(raw, fallback_id)
    except MalformedMessage as error:
        assert len(str(error)) <= MAX_ERROR_CHARS, str(error)[:200]
        assert error.request_id is None or REQUEST_ID.fullmatch(error.request_id)
    else:
        assert REQUEST_ID.fullmatch(request.id) and MODEL_NAME.fullmatch(request.model)
        assert CONTENT_TYPE.fullmatch(request.content_type)
        request.content_type.encode("latin-1")  # what http.client does to a header
        assert decode_request(request.encode()) == request
    assert time.perf_counter() - started < SECONDS


@given(st.binary(max_size=2048) | nested | long_numbers, st.none() | st.text(max_size=140))
@example(b"[" * 100_000, None)  # crashed: RecursionError
@example(b'{"id": "r", "ttl": ' + b"9" * 5000 + b"}", "r")  # crashed: ValueError (int digits)
@example(b'{"id": "r", "ttl": 1e999}', None)
@example(b"\xff\xfe{}", "r")
@example(b'"just a string"', "bad id with spaces\r\n")
def test_any_bytes_give_an_envelope_or_malformed_message(raw: bytes, fallback: str | None) -> None:
    check_promise(raw, fallback)


@given(envelopes, st.none() | st.from_regex(REQUEST_ID, fullmatch=True))
@example(
    json.dumps(
        {"id": "r", "model": "iris", "body": "", "content_type": "application/json\r\nX: 1"}
    ).encode(),
    None,
)  # was accepted, then refused by the HTTP client and retried for ever as a 503
@example(
    json.dumps(
        {"id": "r", "model": "iris", "body": "", "content_type": "text/plain; x=€"}
    ).encode(),
    None,
)
@example(json.dumps({"id": "\ud800", "model": "iris", "body": ""}).encode(), None)
@example(json.dumps({"id": "r", "model": "m" * 10_000, "body": ""}).encode(), "r")
def test_any_envelope_shape_gives_a_safe_request_or_malformed_message(
    raw: bytes, fallback: str | None
) -> None:
    check_promise(raw, fallback)


@given(
    st.from_regex(REQUEST_ID, fullmatch=True),
    st.from_regex(MODEL_NAME, fullmatch=True),
    st.binary(max_size=512),
    st.from_regex(r"[!-~]{1,40}/[ -~]{0,40}[!-~]", fullmatch=True),
    st.none() | st.integers(min_value=1, max_value=7 * 24 * 3600),
)
def test_every_valid_request_survives_the_round_trip(
    request_id: str, model: str, body: bytes, content_type: str, ttl: int | None
) -> None:
    request = InferenceRequest(request_id, model, body, content_type, ttl)
    assert decode_request(request.encode()) == request


@given(st.text(), st.integers(min_value=4, max_value=2000))
@example("\ud800" * 3000, 1000)
def test_header_text_is_bounded_and_encodable(text: str, limit: int) -> None:
    shortened = header_text(text, limit)
    assert len(shortened) <= limit
    shortened.encode("utf-8")


@pytest.mark.parametrize("path", corpus("queue_messages"), ids=lambda p: Path(p).name)
def test_kept_inputs(path: Path) -> None:
    check_promise(path.read_bytes(), "kept-1")


def test_an_envelope_over_the_limit_is_refused_before_parsing() -> None:
    raw: Any = b"[" * 2048
    with pytest.raises(MalformedMessage, match="2048 bytes; the limit is 1024"):
        decode_request(raw, "r-1", max_bytes=1024)


# Envelopes padded with many small values (an unknown field): parsing them once cost 30 times
# their size (10 MiB of '{},' took 299 MB). Memory is now bounded by a few times the message.
padding = st.builds(
    lambda unit, count, key: (
        f'{{"id": "p-1", "model": "m", "body": "", "{key}": [{unit * count}0]}}'.encode()
    ),
    st.sampled_from(["{},", "[],", "1,", '"a",', "0.5,", '{"a":1},']),
    st.integers(1, 200_000),
    st.sampled_from(["pad", "body", "ttl"]),
)


@given(padding)
@example(b'{"id":"p-1","model":"m","body":"","pad":[' + b"{}," * 3_495_000 + b"{}]}")
def test_memory_to_parse_an_envelope_is_a_few_times_its_size(raw: bytes) -> None:
    tracemalloc.start()
    try:
        check_promise(raw, "p-1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 4 * len(raw) + 1_000_000, f"{peak} bytes to parse {len(raw)}"

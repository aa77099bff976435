"""Request decoding, for any input: a value or a ``RequestError``, never another exception.

``Payload.json()``, ``Payload.raw_bytes()`` and ``select_payload`` see whatever a client
sent, as TorchServe handed it over: bytes, text, or a JSON value it already parsed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servekit.runtime.decoding import Payload, _json_faulty, _locate_json_fault, select_payload
from servekit.runtime.errors import RequestError
from tests.fuzz.kept import corpus

CONTENT_TYPES = [
    "",
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/x-anything",
    "image/png",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
]
SECONDS = 2.0  # per call, far above the linear cost of the largest input drawn here

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=20),  # lone surrogates too
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def hostile_text(draw: st.DrawFn) -> bytes:
    """Shapes that hurt parsers: long runs of one character, deep brackets, long numbers."""
    unit = draw(st.sampled_from([b" ", b"\n", b"=", b"A", b"[", b'{"a":', b"9", b"\\ud800"]))
    head = draw(st.sampled_from([b"", b"A", b"QUJD", b"[", b'"', b"-", b"data:x;base64,"]))
    tail = draw(st.sampled_from([b"", b"!", b"=", b"]", b'"', b"=\n"]))
    runs = st.integers(0, 50) | st.sampled_from([1_000, 5_000, 50_000, 200_000])
    return head + unit * draw(runs) + tail


def bodies() -> st.SearchStrategy[Any]:
    as_json = json_values.map(lambda v: json.dumps(v).encode())
    raw = st.binary(max_size=300) | as_json | hostile_text()
    return raw | raw.map(lambda b: b.decode("utf-8", "replace")) | json_values


def outcome(call: Any) -> None:
    """``call()`` returns or raises a RequestError with a message, within ``SECONDS``."""
    started = time.perf_counter()
    try:
        call()
    except RequestError as err:
        assert 400 <= err.status < 500 and err.message
    assert time.perf_counter() - started < SECONDS


@given(value=bodies(), content_type=st.sampled_from(CONTENT_TYPES) | st.text(max_size=30))
def test_payload_gives_a_value_or_a_request_error(value: Any, content_type: str) -> None:
    payload = Payload(value, "body", content_type)
    outcome(payload.json)
    outcome(payload.raw_bytes)
    outcome(lambda: payload.raw_bytes(max_bytes=64))


@given(
    request=st.dictionaries(st.text(max_size=10), bodies(), max_size=4) | json_values,
    fields=st.sampled_from([("body", "data"), ("image",), ()]),
    allow_empty=st.booleans(),
)
def test_select_payload_gives_a_payload_or_a_request_error(
    request: Any, fields: tuple[str, ...], allow_empty: bool
) -> None:
    outcome(lambda: select_payload(request, fields, allow_empty))


@pytest.mark.parametrize("kept", corpus("decoding"), ids=lambda p: p.name)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_kept_inputs(kept: Path, content_type: str) -> None:
    data = kept.read_bytes()
    for value in (data, data.decode("utf-8", "replace")):
        payload = Payload(value, "body", content_type)
        outcome(payload.json)
        outcome(payload.raw_bytes)


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@given(value=json_values, depth=st.integers(0, 70))
def test_the_fast_json_check_and_the_one_that_names_where_agree(value: Any, depth: int) -> None:
    value = nested(value, depth)
    try:
        _locate_json_fault(value)
        located = False
    except RequestError:
        located = True
    assert _json_faulty(value) is located

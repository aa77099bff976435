"""The client's ``X-Request-ID`` under fuzzing (``servekit.runtime.request_ids``).

Its promise, for any header value (str or bytes, any length, any characters) in any spelling
of the header name: the client id is a valid id (safe to put in a body, a header, a log line)
or ``None``, quickly; a kept id is the value sent, unchanged; a dropped one appears in no
output, only its length does.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from ts.context import Context, RequestProcessor

from servekit.runtime.request_ids import (
    HEADER,
    MAX_LENGTH,
    REQUEST_ID,
    request_ids,
    valid_client_id,
)

pytestmark = pytest.mark.fuzz

SECONDS = 0.5  # per value, on a loaded 2-core machine; a check takes microseconds
FRONTEND_ID = "0b6e1f7c-3f7e-4c1a-9d3e-4b8f5a2c1d00"
SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:")

values = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=300),
    st.binary(max_size=300),
    st.from_regex(REQUEST_ID, fullmatch=True),
    st.builds(lambda n, c: c * n, st.integers(0, 100_000), st.sampled_from(["a", "\x00", "é"])),
)


def check(value: object, got: str | None) -> None:
    if got is None:
        return
    assert 0 < len(got) <= MAX_LENGTH and set(got) <= SAFE
    assert got == (value.decode() if isinstance(value, bytes) else value)


@given(values)
@example("x" * MAX_LENGTH)
@example("x" * (MAX_LENGTH + 1))
@example(b"\xff" * 10)
@example("\ud800")
@example("a\r\nX-Injected: 1")
def test_any_value_is_a_valid_id_or_none(value: str | bytes) -> None:
    started = time.perf_counter()
    got = valid_client_id(value)
    assert time.perf_counter() - started < SECONDS
    check(value, got)


@given(values, st.sampled_from([HEADER, HEADER.lower(), HEADER.upper(), "x-Request-Id"]))
def test_any_header_value_gives_a_valid_client_id_or_a_dropped_length(
    value: str | bytes, name: str
) -> None:
    ctx = Context("m", ".", {}, 1, None, "0.12.0")
    ctx.request_ids = {0: FRONTEND_ID}
    ctx.request_processor = [RequestProcessor({name: value, "Content-Type": "text/plain"})]
    started = time.perf_counter()
    ids = request_ids(ctx, 0)
    assert time.perf_counter() - started < SECONDS
    check(value, ids.client_request_id)
    assert (ids.client_request_id is None) == (ids.dropped is not None)
    if ids.client_request_id is None:
        assert ids.dropped == len(value)
        assert "client_request_id" not in ids.fields()
        assert ids.log_text() == (
            f"request_id={FRONTEND_ID} client_request_id=dropped(invalid, {len(value)} chars)"
        )

"""The queue bridge's envelope and result record: round trips and errors that say what to fix."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from servekit.queue.messages import (
    InferenceRequest,
    MalformedMessage,
    StoredResult,
    decode_request,
    done_key,
    header_text,
    result_key,
)


def envelope(**fields: Any) -> bytes:
    base = {"v": 1, "id": "r-1", "model": "iris", "content_type": "application/json", "body": ""}
    return json.dumps({k: v for k, v in (base | fields).items() if v is not ...}).encode()


@pytest.mark.parametrize("body", [b"", b"\x00\xff\x89PNG", "καλημέρα".encode(), bytes(range(256))])
@pytest.mark.parametrize("ttl", [None, 1, 60])
def test_any_bytes_survive_the_round_trip(body: bytes, ttl: int | None) -> None:
    request = InferenceRequest("a.b:c-1_2", "iris/1.0", body, "image/png", ttl)
    assert decode_request(request.encode()) == request


def test_content_type_defaults_to_octet_stream() -> None:
    assert decode_request(envelope(content_type=...)).content_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("raw", "fallback", "request_id", "words"),
    [
        (b"\xff{", "amqp-id", "amqp-id", "message body is not JSON"),
        (b"[]", None, None, "JSON list; expected an object"),
        (envelope(id=...), "amqp-id", "amqp-id", "missing field 'id'"),
        (envelope(id="has space"), None, None, "'id' is 'has space'; expected 1-128"),
        (envelope(id="x" * 129), None, None, "expected 1-128 characters"),
        (envelope(model=...), None, "r-1", "missing field 'model'"),
        (envelope(body=...), None, "r-1", "missing field 'body'"),
        (envelope(model=""), None, "r-1", "'model' is ''; expected a non-empty string"),
        (envelope(model="../admin"), None, "r-1", "expected a model name like 'iris'"),
        (envelope(body=5), None, "r-1", "'body' is int; expected the payload as a base64"),
        (envelope(body="abc"), None, "r-1", "'body' is not valid base64"),
        (envelope(content_type="json"), None, "r-1", "expected a MIME type"),
        (envelope(ttl=0), None, "r-1", "'ttl' is 0; expected whole seconds"),
        (envelope(ttl=True), None, "r-1", "'ttl' is True"),
        (envelope(v=2), None, "r-1", "reads schema version 1"),
        (envelope(modle="iris"), None, "r-1", "unknown field(s) ['modle']; allowed"),
    ],
)
def test_malformed_envelopes_name_the_field_and_keep_the_id(
    raw: bytes, fallback: str | None, request_id: str | None, words: str
) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_request(raw, fallback)
    assert words in str(caught.value)
    assert caught.value.request_id == request_id


def test_stored_result_round_trip_and_json() -> None:
    result = StoredResult("r-1", "iris", 400, "application/json", b'{"message": "bad"}', "bad", 2)
    assert StoredResult.decode(result.encode()) == result
    assert not result.ok and result.json() == {"message": "bad"}
    record = json.loads(result.encode())
    assert base64.b64decode(record["body"]) == result.body


def test_keys_are_per_request_id() -> None:
    assert result_key("servekit", "r-1") == "servekit:result:r-1"
    assert done_key("servekit", "r-1") == "servekit:done:r-1"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 50_000, "not nested"),  # was RecursionError: a loop for ever
        (b"[" * 1000, "not JSON this bridge reads"),  # under the structure cap: the parser says
        (b'{"id": "r-1", "ttl": ' + b"9" * 5000 + b"}", "integers under 4300 digits"),  # ValueError
        (b'{"id": "r-1", "body": "\xc3\x28"}', "not UTF-8 text"),
    ],
)
def test_undecodable_envelopes_are_malformed_messages(raw: bytes, words: str) -> None:
    with pytest.raises(MalformedMessage, match=words) as caught:
        decode_request(raw, "amqp-id")
    assert caught.value.request_id == "amqp-id"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json\r\nX-Injected: 1",
        "text/plain; charset=€",
        " application/json",
        "a/" + "b" * 300,
    ],
)
def test_content_types_http_would_refuse_are_malformed(content_type: str) -> None:
    with pytest.raises(MalformedMessage, match=r"'content_type' is .*visible ASCII") as caught:
        decode_request(envelope(content_type=content_type))
    assert caught.value.request_id == "r-1"


@pytest.mark.parametrize("message_id", ["has space", "x" * 129, "a\r\nb", ""])
def test_an_invalid_amqp_message_id_never_names_the_result(message_id: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_request(b"not json", message_id)
    assert caught.value.request_id is None


def test_the_size_limit_comes_before_parsing() -> None:
    raw = envelope(body=base64.b64encode(b"x" * 3000).decode())
    with pytest.raises(MalformedMessage, match=r"is \d+ bytes; the limit is 2048") as caught:
        decode_request(raw, max_bytes=2048)
    assert caught.value.request_id is None  # not parsed, so the id is not known
    assert decode_request(raw, max_bytes=len(raw)).body == b"x" * 3000


def test_errors_show_a_bounded_piece_of_a_bad_value() -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_request(envelope(model="m" * 100_000))
    assert len(str(caught.value)) < 300 and "(100002 characters)" in str(caught.value)


def test_header_text_is_bounded_and_encodable() -> None:
    assert header_text("abc", 10) == "abc"
    assert header_text("x" * 5000, 100) == "x" * 97 + "..."
    assert header_text("bad \ud800 id", 100) == "bad \\ud800 id"


@pytest.mark.parametrize("unit", [b"{},", b"[],", b"1,", b'"a":1,'])
def test_many_small_values_are_refused_before_parsing(unit: bytes) -> None:
    """10 MiB of '{},' in an unknown field once took 299 MB to parse (8 of them 1.6 GB)."""
    raw = b'{"id": "r-1", "model": "iris", "body": "", "pad": [' + unit * 2000 + b"0]}"
    with pytest.raises(MalformedMessage, match="flat request envelope") as caught:
        decode_request(raw, "r-1")
    assert caught.value.request_id == "r-1"


def test_a_long_id_and_content_type_full_of_separators_still_decode() -> None:
    """The structure cap leaves room for every valid id and content type."""
    content_type = "a/" + "{[,:" * 63
    request = InferenceRequest(":" * 128, "iris", b"x" * 1000, content_type)
    assert decode_request(request.encode()) == request

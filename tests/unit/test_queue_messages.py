"""The queue bridge's envelope and result record: round trips and errors that say what to fix."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from servekit.queue_messages import (
    InferenceRequest,
    MalformedMessage,
    StoredResult,
    decode_request,
    done_key,
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

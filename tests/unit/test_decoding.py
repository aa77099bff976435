from __future__ import annotations

import base64

import pytest

from handlers.decoding import Payload, select_payload
from handlers.errors import BadRequest, PayloadTooLarge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n" + bytes(range(32))


@pytest.mark.parametrize(
    ("value", "expected"),
    [({"a": 1}, {"a": 1}), (b'{"a": 1}', {"a": 1}), ("[1, 2]", [1, 2]), ([3], [3])],
)
def test_json_from_any_decoded_form(value: object, expected: object) -> None:
    assert Payload(value, "body").json() == expected


@pytest.mark.parametrize("value", [b"{bad", "nope", b"\xff\xfe"])
def test_malformed_json_names_the_problem(value: object) -> None:
    with pytest.raises(BadRequest) as err:
        Payload(value, "body").json()
    assert "JSON" in err.value.message or "UTF-8" in err.value.message
    assert err.value.status == 400


def test_raw_bytes_pass_through_and_base64_is_decoded() -> None:
    encoded = base64.b64encode(PNG_MAGIC)
    assert Payload(PNG_MAGIC, "body", "image/png").raw_bytes() == PNG_MAGIC
    assert Payload(encoded, "body", "text/plain").raw_bytes() == PNG_MAGIC
    assert Payload(encoded.decode(), "body").raw_bytes() == PNG_MAGIC
    assert Payload({"b64": encoded.decode()}, "body").raw_bytes() == PNG_MAGIC
    data_url = "data:image/png;base64," + encoded.decode()
    assert Payload(data_url, "body").raw_bytes() == PNG_MAGIC


def test_raw_binary_content_type_is_never_base64_decoded() -> None:
    looks_like_base64 = b"QUJD"
    assert Payload(looks_like_base64, "body", "image/png").raw_bytes() == looks_like_base64


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("not base64!", "not valid base64"), ({"x": 1}, "no base64 field"), ([1], "JSON list")],
)
def test_bad_byte_inputs(value: object, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        Payload(value, "body").raw_bytes()


def test_byte_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as err:
        Payload(b"x" * 11 + b"\x00", "body", "image/png").raw_bytes(max_bytes=10)
    assert err.value.status == 413
    assert "12 bytes" in err.value.message


def test_select_prefers_body_then_data_then_single_field() -> None:
    assert select_payload({"body": b"1", "data": b"2"}, ("body", "data")).value == b"1"
    assert select_payload({"data": b"2"}, ("body", "data")).field == "data"
    assert select_payload({"image": b"3"}, ("body", "data")).field == "image"


def test_select_refuses_ambiguous_forms_and_empty_bodies() -> None:
    with pytest.raises(BadRequest, match="fields: a, b"):
        select_payload({"a": b"1", "b": b"2"}, ("body", "data"))
    for empty in ({"body": b""}, {"body": "  "}, {"body": None}, {}):
        with pytest.raises(BadRequest):
            select_payload(empty, ("body", "data"))


def test_select_allows_empty_when_asked() -> None:
    assert select_payload({}, ("body",), allow_empty=True).value is None
    assert select_payload({"body": b""}, ("body",), allow_empty=True).value == b""

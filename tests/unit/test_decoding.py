from __future__ import annotations

import base64
import math
import re

import pytest

from servekit.runtime.decoding import Payload, brief, select_payload
from servekit.runtime.errors import BadRequest, PayloadTooLarge

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


# ----- hostile inputs (issue 11): each is a 400 naming the problem, in linear time -------------
@pytest.mark.timeout(10)
def test_base64_check_does_not_backtrack() -> None:
    """The old regex took minutes on this body (any content type but image/octet-stream)."""
    body = b"A" + b" " * 100_000 + b"!"
    assert Payload(body, "body", "application/json").raw_bytes() == body
    padded = b"QUJD" + b"\n" * 200_000 + b"=" * 50_000
    assert Payload(padded, "body", "text/x-anything").raw_bytes() == padded


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_base64_wrapped_at_76_columns_decodes(newline: bytes) -> None:
    blob = bytes(range(256)) * 2
    wrapped = base64.encodebytes(blob).replace(b"\n", newline)  # what the `base64` tool writes
    assert wrapped.count(newline) > 5
    assert Payload(wrapped, "body", "text/plain").raw_bytes() == blob
    assert Payload(wrapped.decode(), "body").raw_bytes() == blob
    assert Payload({"b64": wrapped.decode()}, "body").raw_bytes() == blob


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested too deep"),
        ("[" * 50_000 + "]" * 50_000, "nested too deep"),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, "nested too deep"),
        (b"1" * 5000, "JSON integer of 5000 digits; at most 4300"),
        (b'{"x": [-' + b"9" * 4301 + b"]}", "JSON integer of 4301 digits"),
        (b'"\\ud800"', r"lone surrogate (\ud800 at character 0)"),
        (b'{"k\\udfff": 1}', "lone surrogate"),
        (b"[1, NaN]", "JSON number at $[1] is NaN"),
        (b'{"f": [-Infinity]}', "JSON number at $.f[0] is Infinity"),
        (b'{"f": 1e400}', "JSON number at $.f is Infinity (or beyond"),
    ],
)
def test_hostile_json_is_a_400_naming_the_problem(value: bytes | str, fragment: str) -> None:
    with pytest.raises(BadRequest) as err:
        Payload(value, "body").json()
    assert fragment in err.value.message


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("decoded", "fragment"),
    [
        (nested(900), "nested too deep"),
        ({"features": [1.0, math.nan]}, "$.features[1] is NaN"),
        (["ok", "\udc80"], "JSON string at $[1] holds a lone surrogate"),
    ],
)
def test_values_torchserve_decoded_are_checked_too(decoded: object, fragment: str) -> None:
    """TorchServe parses application/json itself (NaN, lone surrogates, 900 levels pass)."""
    with pytest.raises(BadRequest, match=re.escape(fragment)):
        Payload(decoded, "body", "application/json").json()


def test_brief_echoes_huge_values_in_a_few_words() -> None:
    assert brief(10**400) == "an integer of 401 digits"
    assert brief(10**5000) == "an integer of about 5000 digits"
    assert brief("x" * 1000).endswith("...") and len(brief("x" * 1000)) == 40
    assert brief([1] * 10**5) == "a JSON array of 100000 items"

"""Turn one request of a TorchServe batch into a ``Payload`` the handler can read.

TorchServe hands a handler one dict per request: the raw body under ``body``
(or ``data``), multipart form fields by name, JSON already parsed (or left as
bytes when it did not parse), ``text/*`` as ``str`` and everything else as bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.errors import BadRequest, PayloadTooLarge

DEFAULT_FIELDS = ("body", "data")
BASE64_KEYS = ("b64", "base64")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_RAW_BINARY_TYPES = ("image/", "application/octet-stream", "audio/", "video/")


@dataclass(frozen=True)
class Payload:
    """One request's input, as sent: ``value`` is what TorchServe decoded."""

    value: Any
    field: str
    content_type: str = ""

    def json(self) -> Any:
        """The input as a JSON value; bytes and text are parsed here."""
        if isinstance(self.value, (bytes, bytearray)):
            return _parse_json(self._utf8(self.value))
        if isinstance(self.value, str) and self.content_type != "application/json":
            return _parse_json(self.value)
        return self.value  # TorchServe already decoded application/json

    def raw_bytes(self, max_bytes: int | None = None) -> bytes:
        """The input as bytes: raw bodies as they are, base64 decoded wherever it is used."""
        data = self._to_bytes(self.value)
        if not data:
            raise BadRequest(f"field '{self.field}' is empty; send the input bytes")
        if max_bytes is not None and len(data) > max_bytes:
            raise PayloadTooLarge(
                f"field '{self.field}' holds {len(data)} bytes; the limit is {max_bytes}"
            )
        return data

    def _to_bytes(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            if self.content_type.startswith(_RAW_BINARY_TYPES) or not _BASE64_TEXT.match(value):
                return bytes(value)
            return _b64decode(value.decode("ascii"), self.field)
        if isinstance(value, str):
            return _b64decode(value, self.field)
        if isinstance(value, Mapping):
            for key in BASE64_KEYS:
                if isinstance(value.get(key), str):
                    return _b64decode(value[key], f"{self.field}.{key}")
            raise BadRequest(
                f"JSON object in '{self.field}' has no base64 field; send raw bytes or "
                f'{{"b64": "<base64>"}}'
            )
        raise BadRequest(
            f"field '{self.field}' holds JSON {type(value).__name__}; send raw bytes, "
            f'base64 text or {{"b64": "<base64>"}}'
        )

    def _utf8(self, data: bytes | bytearray) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRequest(
                f"field '{self.field}' is not UTF-8 text (bad byte at offset {err.start})"
            ) from None


def select_payload(
    request: Mapping[str, Any], fields: tuple[str, ...], allow_empty: bool = False
) -> Payload:
    """Pick the input field of one request; a missing or empty input is a ``BadRequest``."""
    if not isinstance(request, Mapping) or (allow_empty and not request):
        if allow_empty:
            return Payload(value=None, field="body")
        raise BadRequest("request carries no input fields")
    name = next((f for f in fields if f in request), None)
    if name is None:
        if len(request) != 1:
            listed = ", ".join(sorted(request)) or "none"
            raise BadRequest(
                f"cannot tell which form field holds the input (fields: {listed}); "
                f"name it one of: {', '.join(fields)}"
            )
        name = next(iter(request))
    value = request[name]
    if not allow_empty and (
        value is None or (isinstance(value, (bytes, bytearray, str)) and not value.strip())
    ):
        raise BadRequest("request body is empty; send the model input")
    return Payload(value=value, field=name)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None


def _b64decode(text: str, where: str) -> bytes:
    text = _DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{where}' is not valid base64") from None
    if not data:
        raise BadRequest(f"'{where}' decodes to no bytes")
    return data

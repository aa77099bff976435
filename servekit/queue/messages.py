"""The queue bridge's wire formats: the request envelope on RabbitMQ, the result record in Redis.

A request is one AMQP message whose body is a JSON object (schema version 1)::

    {"v": 1,
     "id": "b0c5...",                      # request id: 1-128 of [A-Za-z0-9._:-]
     "model": "iris",                      # TorchServe model name (optionally "name/version")
     "content_type": "application/json",   # sent to TorchServe as Content-Type
     "body": "eyJmZWF0dXJlcyI6IFsuLi5dfQ==",  # the payload, base64 (any bytes survive)
     "ttl": 3600}                          # optional: seconds the result is kept in Redis

The result is a JSON object stored at ``<prefix>:result:<id>`` (``SET ... EX ttl``)::

    {"id": "b0c5...", "model": "iris", "status": 200, "content_type": "application/json",
     "body": "<base64 of TorchServe's answer>", "error": null, "attempts": 1,
     "bridge": "bridge-4242-1a2b3c"}

``status`` is TorchServe's HTTP status, or 400 for a message the bridge could not read
(then ``error`` says why). The first answer stored for an id wins (``SET NX``): a redelivered
or repeated message never replaces it, so whoever sends an id first owns it.

``decode_request`` is the one reader of untrusted envelopes: for any bytes it returns an
``InferenceRequest`` or raises ``MalformedMessage``. The size limit and the count of
structural bytes (``{ [ , :``) are checked before anything is parsed, so parsing takes a few
times the message's size at most. Error messages echo at most ``SHOWN_CHARS`` of a bad value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from servekit.errors import ToolkitError
from servekit.runtime.decoding import MAX_INT_DIGITS, brief
from servekit.runtime.request_ids import REQUEST_ID

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "servekit"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_.-]{1,64})?")
# Visible ASCII, inner spaces allowed: what http.client sends as a header without complaint
# (no CR/LF, nothing outside Latin-1) and what fits an AMQP short string.
CONTENT_TYPE = re.compile(r"[!-~]([ -~]{0,253}[!-~])?")
FIELDS = ("v", "id", "model", "content_type", "body", "ttl")
MAX_TTL = 7 * 24 * 3600
# TorchServe's default max_request_size is 6,553,500 bytes: base64 makes that 8.7 MB, so 10 MiB
# admits every body TorchServe would take and refuses the rest before parsing them.
MAX_ENVELOPE_BYTES = 10 * 1024 * 1024
SHOWN_CHARS = 80  # of a bad value, in an error message
# An envelope is one flat object of six fields at most: one '{', a few ',' and ':' (more in a
# content type or an id), and base64 has none of them. A cap on these bytes, counted before
# parsing, bounds what json.loads builds: 10 MiB of '{},' once took 299 MB to parse.
STRUCTURE_BYTES = (b"{", b"[", b",", b":")
MAX_STRUCTURE_BYTES = 1024


class QueueError(ToolkitError):
    """Base of the queue bridge's errors."""


class MalformedMessage(QueueError):
    """A message that is not a valid request envelope; it goes to the dead-letter queue.

    ``request_id`` is set when the id could be read, so the producer still gets an answer.
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class InferenceRequest:
    """One request: which model, what bytes, and how long to keep the answer."""

    id: str
    model: str
    body: bytes
    content_type: str = "application/octet-stream"
    ttl: int | None = None

    def encode(self) -> bytes:
        envelope: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "model": self.model,
            "content_type": self.content_type,
            "body": base64.b64encode(self.body).decode("ascii"),
        }
        if self.ttl is not None:
            envelope["ttl"] = self.ttl
        return json.dumps(envelope, separators=(",", ":")).encode()


@dataclass(frozen=True)
class StoredResult:
    """What the bridge stores for a request id: TorchServe's answer or why there is none."""

    id: str
    model: str
    status: int
    content_type: str
    body: bytes
    error: str | None = None
    attempts: int = 1
    bridge: str = ""  # the bridge that answered (for logs and audits)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body parsed as JSON (TorchServe's answers and errors are JSON for our handlers)."""
        return json.loads(self.body)

    def encode(self) -> bytes:
        record = asdict(self) | {"body": base64.b64encode(self.body).decode("ascii")}
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> StoredResult:
        record = json.loads(raw)
        return cls(**(record | {"body": base64.b64decode(record["body"])}))


def result_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:result:{request_id}"


def done_key(prefix: str, request_id: str) -> str:
    """A one-item list pushed with the result: ``BLPOP`` on it waits without polling."""
    return f"{prefix}:done:{request_id}"


def attempts_key(prefix: str, request_id: str) -> str:
    """A hash counting TorchServe calls and worker deaths across deliveries and bridges."""
    return f"{prefix}:attempts:{request_id}"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``brief`` as the bridge's errors use it: the repr cut to ``limit``, its length said."""
    return brief(value, limit, length=True)


def header_text(text: str, limit: int) -> str:
    """``text`` made encodable (lone surrogates escaped) and cut to ``limit`` characters."""
    escaped = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit or len(escaped) > limit:
        return escaped[: limit - 3] + "..."
    return escaped


def valid_request_id(value: object) -> str | None:
    """``value`` when it is a valid request id (safe as a Redis key), else ``None``."""
    return value if isinstance(value, str) and REQUEST_ID.fullmatch(value) else None


def check_request_id(value: object) -> str:
    request_id = valid_request_id(value)
    if request_id is None:
        raise MalformedMessage(
            f"'id' is {shown(value)}; expected 1-128 characters of letters, digits and ._:- "
            "(a uuid4 hex is a good choice)"
        )
    return request_id


def _text_field(envelope: dict[str, Any], key: str, request_id: str) -> str:
    value = envelope.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(
            f"'{key}' is {shown(value)}; expected a non-empty string", request_id
        )
    return value


def _body(envelope: dict[str, Any], request_id: str) -> bytes:
    value = envelope.get("body")
    if not isinstance(value, str):
        raise MalformedMessage(
            f"'body' is {type(value).__name__}; expected the payload as a base64 string",
            request_id,
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedMessage(f"'body' is not valid base64 ({error})", request_id) from None


def _ttl(envelope: dict[str, Any], request_id: str) -> int | None:
    value = envelope.get("ttl")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL:
        raise MalformedMessage(
            f"'ttl' is {shown(value)}; expected whole seconds from 1 to {MAX_TTL}, or leave it out",
            request_id,
        )
    return value


def _envelope(raw: bytes, fallback_id: str | None, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise MalformedMessage(
            f"message body is {len(raw)} bytes; the limit is {max_bytes} "
            "(the bridge's --max-message-bytes); send a smaller payload or raise the limit",
            fallback_id,
        )
    structure = sum(raw.count(byte) for byte in STRUCTURE_BYTES)
    if structure > MAX_STRUCTURE_BYTES:
        raise MalformedMessage(
            f"message body has {structure} of the bytes {{ [ , : (at most {MAX_STRUCTURE_BYTES}); "
            'expected one flat request envelope {"v": 1, "id", "model", "content_type", '
            '"body": base64}, not nested or repeated values',
            fallback_id,
        )
    try:
        envelope = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise MalformedMessage(
            f"message body is not JSON: not UTF-8 text ({error.reason} at byte {error.start}); "
            "expected a request envelope in UTF-8",
            fallback_id,
        ) from None
    except (ValueError, RecursionError) as error:  # ValueError: bad JSON, over-long integers
        raise MalformedMessage(
            f"message body is not JSON this bridge reads ({shown(str(error), 200)}); expected "
            'a request envelope {"v": 1, "id", "model", "content_type", "body": base64}, '
            f"nested a few levels at most, integers under {MAX_INT_DIGITS} digits",
            fallback_id,
        ) from None
    if not isinstance(envelope, dict):
        raise MalformedMessage(
            f"message body is a JSON {type(envelope).__name__}; expected an object", fallback_id
        )
    return envelope


def _content_type(envelope: dict[str, Any], request_id: str) -> str:
    value = envelope.get("content_type", "application/octet-stream")
    if not isinstance(value, str) or "/" not in value or not CONTENT_TYPE.fullmatch(value):
        raise MalformedMessage(
            f"'content_type' is {shown(value)}; expected a MIME type like 'application/json' "
            "(visible ASCII, at most 255 characters, no line breaks)",
            request_id,
        )
    return value


def decode_request(
    raw: bytes, fallback_id: str | None = None, max_bytes: int = MAX_ENVELOPE_BYTES
) -> InferenceRequest:
    """Parse and check one envelope of at most ``max_bytes``.

    ``fallback_id`` (the AMQP message_id) names a broken envelope when it is a valid request
    id; any other value is ignored, so it never becomes a Redis key.
    """
    fallback_id = valid_request_id(fallback_id)
    envelope = _envelope(raw, fallback_id, max_bytes)
    if "id" not in envelope:
        raise MalformedMessage("missing field 'id' (the request id)", fallback_id)
    request_id = check_request_id(envelope["id"])
    unknown = sorted(set(envelope) - set(FIELDS))
    if unknown:
        raise MalformedMessage(
            f"unknown field(s) {shown(unknown, 200)}; allowed: {list(FIELDS)}", request_id
        )
    if envelope.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise MalformedMessage(
            f"'v' is {shown(envelope['v'])}; this bridge reads schema version {SCHEMA_VERSION}",
            request_id,
        )
    for key in ("model", "body"):
        if key not in envelope:
            raise MalformedMessage(f"missing field '{key}'", request_id)
    model = _text_field(envelope, "model", request_id)
    if not MODEL_NAME.fullmatch(model):
        raise MalformedMessage(
            f"'model' is {shown(model)}; expected a model name like 'iris' or 'iris/1.0'",
            request_id,
        )
    content_type = _content_type(envelope, request_id)
    return InferenceRequest(
        request_id, model, _body(envelope, request_id), content_type, _ttl(envelope, request_id)
    )

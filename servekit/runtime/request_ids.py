"""Request ids: the frontend's own for each request, and the client's ``X-Request-ID`` when
it is safe to repeat.

TorchServe 0.12 makes a UUID for every request, hands it to the worker
(``context.get_request_id(idx)``) and sends it back as the ``x-request-id`` response header;
it ignores the id a client sends. The client's headers reach the worker as a dict per request
(``context.get_all_request_header(idx)``), keyed by the names *as the client spelled them*
(Netty keeps their case), values decoded as UTF-8; so the client's id is looked up
case-insensitively, in that request's own headers only.

A client id is kept only when it is 1-128 characters of ``A-Z a-z 0-9 - . _ :`` (a UUID, a
ULID, ``trace:span``, the queue bridge's ids): safe in a JSON body, a response header, a log
line and a grep. Anything else (too long, empty, spaces, control characters, non-ASCII) is
dropped, never echoed or logged: only its length is.

    >>> valid_client_id("client-abc-123")
    'client-abc-123'
    >>> valid_client_id("two words") is None
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

HEADER = "X-Request-ID"
"""The request header a client (or the queue bridge) sends its own id in."""
ECHO_HEADER = "X-Client-Request-ID"
"""The response header the client's id comes back in. Not ``X-Request-ID``: the frontend
sets its own ``x-request-id`` on every response after the handler's headers, replacing one
the handler set (measured on 0.12; tests/e2e/test_request_id_tracing.py)."""
VERSION_HEADER = "X-Model-Version"
"""On every answer: the model version that gave it, when it is a ``MODEL_VERSION``."""
MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A model version servekit puts in a header or rolls out (``1.0``, ``2024-05-01``, ``v3``):
nothing a header, a URL path or a file name would have to escape."""
MAX_LENGTH = 128
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A safe request id, the one definition: the queue bridge's message ids use it too."""


def valid_client_id(value: object) -> str | None:
    """``value`` when it is a safe request id (1-128 of ``[A-Za-z0-9._:-]``), else ``None``.

    ``bytes`` count when they are UTF-8 of such an id; any other type is ``None``.
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_LENGTH:
            return None
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LENGTH:
        return None
    return value if REQUEST_ID.fullmatch(value) else None


@dataclass(frozen=True)
class RequestIds:
    """The ids of one request: the frontend's, and the client's if it sent a valid one.

    ``dropped`` is the length of a client id that was sent but refused (else ``None``).
    """

    request_id: str | None
    client_request_id: str | None = None
    dropped: int | None = None

    def fields(self) -> dict[str, str | None]:
        """The fields an error body gains: ``request_id``, and ``client_request_id`` if valid."""
        fields: dict[str, str | None] = {"request_id": self.request_id}
        if self.client_request_id is not None:
            fields["client_request_id"] = self.client_request_id
        return fields

    def log_text(self) -> str:
        """``request_id=... client_request_id=...`` for a log line (both always safe to print)."""
        text = f"request_id={self.request_id or '-'}"
        if self.client_request_id is not None:
            text += f" client_request_id={self.client_request_id}"
        elif self.dropped is not None:
            text += f" client_request_id=dropped(invalid, {self.dropped} chars)"
        return text


def client_header(context: Any, idx: int) -> list[object]:
    """Every value request ``idx`` sent under ``X-Request-ID``, any spelling of the name."""
    headers = context.get_all_request_header(idx) or {}
    wanted = HEADER.lower()
    return [value for key, value in headers.items() if str(key).lower() == wanted]


def request_ids(context: Any, idx: int) -> RequestIds:
    """The ids of request ``idx`` of this batch (read from that request alone)."""
    frontend = valid_client_id(context.get_request_id(idx))
    sent = client_header(context, idx)
    if not sent:
        return RequestIds(frontend)
    client = valid_client_id(sent[0]) if len(set(map(repr, sent))) == 1 else None
    if client is not None:
        return RequestIds(frontend, client)
    return RequestIds(frontend, dropped=sum(_length(value) for value in sent))


def _length(value: object) -> int:
    return len(value) if isinstance(value, (str, bytes, bytearray)) else 0

"""Errors a handler raises for one request; each carries its HTTP status."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from servekit.runtime.request_ids import RequestIds


class RequestError(Exception):
    """A request the handler cannot serve; answered with ``status`` and ``message``.

    Raise it (or a subclass) from ``parse_request``: only that request fails,
    the rest of its batch is still served.
    """

    status: HTTPStatus = HTTPStatus.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        status: HTTPStatus | None = None,
        unexpected: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.unexpected = unexpected
        """An exception the handler did not expect behind this answer: the server log gets
        its stack trace, the client only ``message``."""
        if status is not None:
            self.status = status

    def body(self, ids: RequestIds | None = None) -> dict[str, Any]:
        """The JSON error body, shaped like TorchServe's own error responses, with the
        request's ids (``request_id``, and ``client_request_id`` when the client sent one)."""
        body: dict[str, Any] = {
            "code": int(self.status),
            "type": type(self).__name__,
            "message": self.message,
        }
        return body | ids.fields() if ids is not None else body


class BadRequest(RequestError):
    """Malformed or invalid input: wrong JSON, wrong shape, wrong type."""


class PayloadTooLarge(RequestError):
    """An input bigger than the handler accepts."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(RequestError):
    """Bytes the handler cannot decode, such as a non-image sent to an image model."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class ServiceUnavailable(RequestError):
    """Valid, but not now: this batch has no room left for it; the client should retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class InternalError(RequestError):
    """An unexpected failure; the client only ever sees this generic message."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self) -> None:
        super().__init__("Internal error while serving this request; see the server log.")


class InsufficientMemory(InternalError):
    """The model ran out of memory on this request alone (TorchServe's own code for it: 507).

    The base handler answers it only after the batch was split down to this one request:
    the others of its batch got their answers.
    """

    status = HTTPStatus.INSUFFICIENT_STORAGE

    def __init__(self) -> None:
        RequestError.__init__(
            self,
            "Out of memory on this request alone (its batch was split until it ran by "
            "itself); send a smaller input, or see the server log.",
        )


class ModelLoadError(RuntimeError):
    """The handler cannot initialize: a missing or broken file, or a bad option."""

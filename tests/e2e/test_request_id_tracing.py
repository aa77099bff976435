"""Request ids on a real TorchServe (the default ``config.properties``): a failed request's body
and its ``model_log.log`` line carry the frontend's id (the response's ``x-request-id``) and
the client's valid ``X-Request-ID``; a hostile one is echoed nowhere."""

from __future__ import annotations

import re
import time

import pytest
import requests

from servekit.runtime.request_ids import ECHO_HEADER, HEADER
from servekit.serve.server import TorchServe

pytestmark = pytest.mark.e2e

BAD = b'{"features": [1, 2, "three", 4]}'
GOOD = b'{"features": [6.7, 3.0, 5.2, 2.3]}'
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
WAIT = 30.0  # an upper bound for a log line to reach the file, not a timing


def predict(server: TorchServe, body: bytes, client_id: str | bytes | None) -> requests.Response:
    headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
    if client_id is not None:
        headers[HEADER] = client_id  # bytes go on the wire as they are
    url = f"{server.inference_url}/predictions/iris"
    return requests.post(url, data=body, headers=headers, timeout=30)


def model_log(server: TorchServe) -> bytes:
    path = server.log_dir / "model_log.log"
    return path.read_bytes() if path.exists() else b""


def log_line_with(server: TorchServe, *parts: str) -> str:
    """The first ``model_log.log`` line holding every part (polled: the worker's stdout
    reaches the file through the frontend)."""
    deadline = time.monotonic() + WAIT
    while True:
        for line in model_log(server).decode("utf-8", "replace").splitlines():
            if all(part in line for part in parts):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line in model_log.log with {parts} within {WAIT} s")
        time.sleep(0.1)


def test_a_bad_requests_ids_are_in_its_body_its_headers_and_the_model_log(
    server: TorchServe,
) -> None:
    response = predict(server, BAD, "client-abc-123")
    assert response.status_code == 400
    body = response.json()
    frontend_id = response.headers["x-request-id"]
    assert UUID.fullmatch(frontend_id)
    assert body["request_id"] == frontend_id
    assert body["client_request_id"] == "client-abc-123"
    assert response.headers[ECHO_HEADER] == "client-abc-123"
    line = log_line_with(server, f"request_id={frontend_id}")
    assert "client_request_id=client-abc-123 answered 400 BadRequest: feature 2" in line


def test_the_frontend_keeps_its_own_x_request_id(server: TorchServe) -> None:
    """TorchServe answers with its id, never the client's: hence ``X-Client-Request-ID``."""
    response = predict(server, GOOD, "client-abc-123")
    assert response.headers["x-request-id"] != "client-abc-123"
    assert UUID.fullmatch(response.headers["x-request-id"])


def test_a_good_request_still_gets_its_unchanged_answer(server: TorchServe) -> None:
    plain = predict(server, GOOD, None)
    with_id = predict(server, GOOD, "client-good-1")
    assert plain.status_code == with_id.status_code == 200
    assert with_id.content == plain.content and with_id.json()["label"] == "virginica"
    assert with_id.headers[ECHO_HEADER] == "client-good-1" and ECHO_HEADER not in plain.headers


HOSTILE: list[bytes] = [
    b"h" * 500,
    b"ctl\x01\x02\x1b[31m\x7f",
    "caf\u00e9-\u2603-\U0001f600".encode(),
    b"\xff\xfe\xfd latin-1",
    b"a b c",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=["long", "control", "utf-8", "latin-1", "spaces"])
def test_a_hostile_client_id_is_echoed_nowhere_and_the_request_still_answered(
    server: TorchServe, hostile: bytes
) -> None:
    bad = predict(server, BAD, hostile)
    good = predict(server, GOOD, hostile)
    assert bad.status_code == 400 and good.status_code == 200
    assert good.json()["label"] == "virginica"
    body = bad.json()
    assert set(body) == {"code", "type", "message", "request_id"}
    assert body["request_id"] == bad.headers["x-request-id"]
    for response in (bad, good):
        assert ECHO_HEADER not in response.headers
        assert hostile not in response.content
        assert all(hostile not in value.encode("latin-1") for value in response.headers.values())
    # The worker sees the bytes as Latin-1 characters re-encoded to UTF-8 by the frontend.
    seen = hostile.decode("latin-1")
    dropped = f"client_request_id=dropped(invalid, {len(seen)} chars)"
    log_line_with(server, f"request_id={bad.headers['x-request-id']} {dropped} answered 400")
    log_line_with(server, f"request_id={good.headers['x-request-id']} {dropped}: an invalid")
    logged = model_log(server)
    assert hostile not in logged and seen.encode() not in logged


def test_a_nul_in_the_header_never_reaches_the_handler(server: TorchServe) -> None:
    """Netty refuses the whole request itself (measured on 0.12)."""
    response = predict(server, GOOD, b"a\x00b")
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid HTTP message."

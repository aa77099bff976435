"""Request ids (``servekit.runtime.request_ids``): the client id's validator, reading it from
TorchServe's own ``Context``, the ids in error bodies, the response header and the one log
line per failed request (handlers run through TorchServe's worker code), and the queue
bridge's ``X-Request-ID``."""

from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ts.context import Context, RequestProcessor

from servekit.queue.bridge import Bridge, BridgeConfig
from servekit.queue.messages import InferenceRequest, MalformedMessage, check_request_id
from servekit.runtime.errors import BadRequest
from servekit.runtime.request_ids import (
    ECHO_HEADER,
    HEADER,
    MAX_LENGTH,
    VERSION_HEADER,
    RequestIds,
    request_ids,
    valid_client_id,
)
from servekit.serve.harness import LocalModel, Reply, Request
from tests.unit.test_batch_contract import MOODY, model_dir

GOOD = [
    "client-abc-123",
    "2e5b0812-b2ec-4222-b8e0-92521719f1d2",  # a uuid4, fixed: ids stay stable across runs
    "d6fb8024f1214f34b2f638ecaf63e1b1",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "trace:span.1_x",
    "a",
    "x" * MAX_LENGTH,
]
BAD: list[object] = [
    "",
    "x" * (MAX_LENGTH + 1),
    "two words",
    " lead",
    "tab\there",
    "nul\x00",
    "line\nfeed",
    "bell\x07",
    "del\x7f",
    "café",
    "١٢٣",  # digits, but not ASCII
    "\uff41\uff42\uff43",  # fullwidth letters
    "semi;colon",
    "slash/",
    "quote'",
    "<script>",
    "\ud800",
    b"\xff\xfe",
    b"caf\xc3\xa9",
    b"x" * (MAX_LENGTH + 1),
    None,
    123,
    ["client-abc-123"],
]


# ----- the validator ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", GOOD)
def test_a_safe_id_is_kept_as_it_is(value: str) -> None:
    assert valid_client_id(value) == value
    assert valid_client_id(value.encode()) == value


@pytest.mark.parametrize("value", BAD)
def test_anything_else_is_dropped(value: object) -> None:
    assert valid_client_id(value) is None


def test_the_queue_bridge_ids_are_exactly_the_valid_client_ids() -> None:
    """One definition: an id the bridge accepts is one the handler keeps, and the reverse."""
    assert valid_client_id(uuid.uuid4().hex) is not None  # QueueClient.submit's default
    for good in GOOD:
        assert check_request_id(good) == good
    for bad in BAD:
        with pytest.raises(MalformedMessage):
            check_request_id(bad)


# ----- read from TorchServe's own Context ------------------------------------------------------
def context(*headers: dict[str, str]) -> Context:
    """A ``ts.context.Context`` as ``ts.service.Service.predict`` fills it for a batch."""
    ctx = Context("m", ".", {}, len(headers), None, "0.12.0")
    ctx.request_ids = {i: f"frontend-{i}" for i in range(len(headers))}
    ctx.request_processor = [RequestProcessor(dict(h)) for h in headers]
    return ctx


def test_each_request_has_its_own_ids_whatever_the_header_spelling() -> None:
    ctx = context(
        {"X-Request-ID": "a-1", "Content-Type": "application/json"},
        {"x-request-id": "b-2"},
        {"Content-Type": "application/json"},
        {"X-REQUEST-ID": "c 3"},
    )
    assert [request_ids(ctx, i) for i in range(4)] == [
        RequestIds("frontend-0", "a-1"),
        RequestIds("frontend-1", "b-2"),
        RequestIds("frontend-2"),
        RequestIds("frontend-3", dropped=3),
    ]


def test_two_spellings_with_two_values_are_dropped() -> None:
    ctx = context({"X-Request-ID": "a-1", "x-request-id": "b-2"})
    assert request_ids(ctx, 0) == RequestIds("frontend-0", dropped=6)
    same = context({"X-Request-ID": "a-1", "x-request-id": "a-1"})
    assert request_ids(same, 0) == RequestIds("frontend-0", "a-1")


def test_without_request_ids_the_frontend_id_is_none() -> None:
    ctx = context({"X-Request-ID": "a-1"})
    ctx.request_ids = None
    assert request_ids(ctx, 0) == RequestIds(None, "a-1")


def test_error_body_fields_and_log_text() -> None:
    error = BadRequest("send an integer")
    assert error.body() == {"code": 400, "type": "BadRequest", "message": "send an integer"}
    assert error.body(RequestIds("f-1", "c-1")) == {
        "code": 400,
        "type": "BadRequest",
        "message": "send an integer",
        "request_id": "f-1",
        "client_request_id": "c-1",
    }
    assert error.body(RequestIds("f-1", dropped=500)) == {**error.body(), "request_id": "f-1"}
    assert RequestIds("f-1", "c-1").log_text() == "request_id=f-1 client_request_id=c-1"
    dropped = RequestIds("f-1", dropped=500).log_text()
    assert dropped == "request_id=f-1 client_request_id=dropped(invalid, 500 chars)"
    assert RequestIds(None).log_text() == "request_id=-"


# ----- through TorchServe's worker code --------------------------------------------------------
HEX_ID = re.compile(r"[0-9a-f]{32}")  # the harness's frontend ids (TorchServe's are UUIDs)


@pytest.fixture()
def moody(tmp_path: Path) -> Iterator[LocalModel]:
    options = "degraded_after_errors: 2;recheck_seconds: 0"
    with LocalModel(model_dir(tmp_path, "moody", MOODY, options), batch_size=4) as model:
        yield model


def sent(value: object, client_id: str | None = None) -> Request:
    plain = Request.json(value)
    extra = ((HEADER, client_id),) if client_id is not None else ()
    return Request(plain.parameters, plain.headers + extra)


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "servekit.runtime.base"]


def test_a_bad_request_has_both_ids_in_its_body_header_and_one_log_line(
    moody: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="servekit.runtime.base"):
        bad, good = moody.predict([sent("x", "client-abc-123"), sent(4, "client-good-1")])
    assert (bad.status, good.status) == (400, 200)
    body = bad.json()
    assert body["client_request_id"] == "client-abc-123" and HEX_ID.fullmatch(body["request_id"])
    assert body["message"] == "send an integer" and body["code"] == 400
    assert bad.headers[ECHO_HEADER] == "client-abc-123"
    assert good.json() == 8 and good.headers[ECHO_HEADER] == "client-good-1"  # body unchanged
    [line] = failure_lines(caplog)
    assert line.levelno == logging.INFO and line.exc_info is None
    assert line.getMessage() == (
        f"moody: request_id={body['request_id']} client_request_id=client-abc-123 "
        "answered 400 BadRequest: send an integer"
    )


@pytest.mark.parametrize(
    "hostile", ["h" * 500, "ctl\x01\x02\x7f", "caf\u00e9-\u2603", "two words", ""]
)
def test_a_hostile_client_id_is_never_echoed_nor_logged(
    moody: LocalModel, caplog: pytest.LogCaptureFixture, hostile: str
) -> None:
    with caplog.at_level(logging.INFO, logger="servekit.runtime.base"):
        bad, good = moody.predict([sent("x", hostile), sent(4, hostile)])
    assert (bad.status, good.status) == (400, 200) and good.json() == 8
    assert set(bad.json()) == {"code", "type", "message", "request_id"}
    assert ECHO_HEADER not in bad.headers and ECHO_HEADER not in good.headers
    lines = [r.getMessage() for r in failure_lines(caplog)]
    assert len(lines) == 2  # the failure's own line, and the success's dropped id
    assert f"client_request_id=dropped(invalid, {len(hostile)} chars) answered 400" in lines[0]
    assert f"an invalid {HEADER} was dropped" in lines[1]
    if hostile:
        assert all(hostile not in line for line in lines)
        assert hostile.encode() not in bad.body


def test_a_server_error_keeps_its_stack_trace_now_with_the_ids(
    moody: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="servekit.runtime.base"):
        [reply] = moody.predict([sent(13, "client-500")])
    assert reply.status == 500 and reply.json()["client_request_id"] == "client-500"
    assert "upsets" not in reply.body.decode()  # the client gets the generic message
    [line] = [r for r in failure_lines(caplog) if "answered" in r.getMessage()]
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert f"request_id={reply.json()['request_id']} client_request_id=client-500" in (
        line.getMessage()
    )
    assert "answered 500 InternalError: RuntimeError('this input upsets the model')" in (
        line.getMessage()
    )


def test_an_unexpected_parse_error_is_one_warning_with_its_trace(
    moody: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="servekit.runtime.base"):
        [reply] = moody.predict([sent("deep", "client-deep")])
    assert reply.status == 400
    [line] = failure_lines(caplog)
    assert line.levelno == logging.WARNING and line.exc_info is not None
    assert "client_request_id=client-deep answered 400 BadRequest" in line.getMessage()
    assert line.getMessage().endswith("[RecursionError]")


def test_successes_add_no_log_line(moody: LocalModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="servekit.runtime.base"):
        replies = moody.predict([sent(1, "c-1"), sent(2), sent(3, "c-3")])
    assert [r.json() for r in replies] == [2, 4, 6]
    assert failure_lines(caplog) == []


def test_the_describe_path_is_unchanged(moody: LocalModel) -> None:
    request = Request((), (("describe", "True"), (HEADER, "client-describe")))
    [reply] = moody.predict([request])
    assert reply.status == 200 and "status" in reply.json() and "request_id" not in reply.json()


def reply_ids(reply: Reply) -> tuple[object, object]:
    body = reply.json()
    return body.get("request_id"), body.get("client_request_id")


def test_in_a_batch_each_error_names_its_own_request(moody: LocalModel) -> None:
    replies = moody.predict([sent("a", "c-a"), sent("b"), sent("c", "c-c"), sent(5, "c-d")])
    ids = [reply_ids(r) for r in replies[:3]]
    assert [c for _, c in ids] == ["c-a", None, "c-c"]
    assert len({f for f, _ in ids}) == 3  # three frontend ids, one per request
    assert replies[3].json() == 10


# ----- the queue bridge sends its id ------------------------------------------------------------
class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.headers.get(HEADER))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return


def test_the_bridge_sends_its_request_id_as_x_request_id() -> None:
    Recorder.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        bridge = Bridge(BridgeConfig("amqp://h:1/%2F", "redis://127.0.0.1:9/0", url), "unit")
        rid = check_request_id(uuid.uuid4().hex)
        status, _, _ = bridge._call(InferenceRequest(rid, "iris", b"{}", "application/json"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert status == 200 and Recorder.seen == [rid]
    assert valid_client_id(rid) == rid


@pytest.mark.parametrize(
    ("version", "header"),
    [("1", "1"), ("2.0-rc_1", "2.0-rc_1"), ("3.0\r\nX-Evil: 1", None), ("v 2", None), ("", None)],
)
def test_the_model_version_header_only_carries_a_safe_version(
    tmp_path: Path, version: str, header: str | None
) -> None:
    """Every answer names the version that gave it (servekit rollout relies on it); a manifest
    version a header would have to escape (CR/LF, spaces) is not sent at all."""
    directory = model_dir(tmp_path, "moody", MOODY)
    manifest = directory / "MAR-INF" / "MANIFEST.json"
    described = json.loads(manifest.read_text())
    described["model"]["modelVersion"] = version
    manifest.write_text(json.dumps(described))
    with LocalModel(directory, batch_size=2) as model:
        good, bad = model.predict([Request.json(4), Request.json("x")])
    assert (good.status, bad.status) == (200, 400)
    assert good.headers.get(VERSION_HEADER) == header and bad.headers.get(VERSION_HEADER) == header

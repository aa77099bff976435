"""``servekit bench --url`` judges its runs: no answer at all exits 3, no 2xx answer or nothing
measured exits 1, bad load arguments exit 2 before anything is sent; its JSON is strict."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servekit import cli
from servekit.bench import run
from servekit.serve.server import free_ports


class Handler(BaseHTTPRequestHandler):
    """``/ok`` answers 200, ``/busy`` 503, anything else 404 (an unknown model)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = {"/ok": 200, "/busy": 503}.get(self.path, 404)
        reply = b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_text("{}")
    return path


def bench(
    url: str, payload: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    args = ["bench", "--url", url, "--payload", str(payload), "-c", "2"]
    code = cli.main([*args, "--duration", "0.5", "--warmup", "0", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_server_that_answers_2xx_exits_0_with_strict_json(
    base: str, payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    code, _, err = bench(f"{base}/ok", payload, capsys, "--out", str(out))
    assert code == cli.OK, err
    run = json.loads(out.read_text())["runs"][0]
    assert run["ok"] > 0 and run["latency_ms"]["p50"] > 0


def test_no_server_at_all_is_unreachable_before_any_load(
    payload: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a whole --duration of connection errors first: one connect, then exit 3."""
    (port,) = free_ports(1)  # nothing listens there
    url = f"http://127.0.0.1:{port}/predictions/tiny"

    def no_load(*args: object) -> None:
        raise AssertionError("the load ran against a server that is not there")

    monkeypatch.setattr(run.loadgen, "run", no_load)
    code, _, err = bench(url, payload, capsys, "--duration", "3600")
    assert code == cli.UNREACHABLE
    assert f"servekit bench: cannot reach {url}: " in err and f"127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_a_url_without_a_host_is_bad_input(
    payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = bench("http:///predictions/tiny", payload, capsys)
    assert code == cli.USAGE and "has no host" in err


@pytest.mark.parametrize(("path", "status"), [("/predictions/nosuch", "404"), ("/busy", "503")])
def test_no_2xx_answer_fails_naming_the_statuses(
    base: str, payload: Path, path: str, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = bench(f"{base}{path}", payload, capsys)
    assert code == cli.FAILED
    assert "got a 2xx answer" in err and f"({status} x" in err


def test_a_url_without_a_path_gets_no_2xx_and_fails(
    base: str, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = bench(base, payload, capsys)
    assert code == cli.FAILED
    assert "got a 2xx answer" in err


def test_nothing_finished_after_the_warmup_fails(
    base: str, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--url", f"{base}/ok", "--payload", str(payload), "-c", "1"]
    code = cli.main([*args, "--requests", "2", "--duration", "30", "--warmup", "20"])
    err = capsys.readouterr().err
    assert code == cli.FAILED
    assert "no request finished after the 20 s warmup" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "-1"], "duration is -1.0 s"),
        (["--duration", "0"], "duration is 0.0 s"),
        (["--duration", "nan"], "duration is nan s"),
        (["--timeout", "0"], "timeout is 0.0 s"),
        (["--warmup", "-1"], "warmup is -1.0 s"),
        (["--warmup", "5", "--duration", "1"], "--warmup 5 s (default 2) must be shorter"),
        (["--duration", "2"], "--warmup 2 s (default 2) must be shorter than --duration 2 s"),
        (["-c", "100000000"], "concurrency is 100000000; expected an integer from 1 to 10000"),
        (["--rate", "5", "--max-in-flight", "20000"], "max_in_flight is 20000"),
    ],
)
def test_bad_load_arguments_are_usage_errors_before_any_request(
    args: list[str], message: str, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/x"
    code = cli.main(["bench", "--url", url, "--payload", str(payload), *args])
    err = capsys.readouterr().err
    assert code == cli.USAGE
    assert message in err and "Traceback" not in err

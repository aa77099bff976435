"""``servekit examples`` against a fake TorchServe: the models it really serves, a live answer
only where servekit has a sample input, exit codes, and digit.png only when digits is served."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servekit import cli
from servekit.serve import examples


class Fake:
    """What the fake server answers: its models, /ping's status, each model's status."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.ping = 200
        self.status: dict[str, int] = {}
        self.posted: dict[str, bytes] = {}


def handler_for(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/ping":
                self.answer(fake.ping, {"status": "Healthy" if fake.ping == 200 else "Unhealthy"})
            elif self.path.startswith("/models"):
                self.answer(200, {"models": [{"modelName": m} for m in fake.models]})
            else:
                self.answer(404, {})

        def do_POST(self) -> None:
            model = self.path.removeprefix("/predictions/")
            length = int(self.headers.get("Content-Length") or 0)
            fake.posted[model] = self.rfile.read(length)
            status = fake.status.get(model, 200 if model in fake.models else 404)
            self.answer(status, {"model": model})

    return Handler


@pytest.fixture
def fake() -> Iterator[tuple[Fake, str]]:
    state = Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(url: str, root: Path) -> int:
    urls = ["--inference-url", url, "--management-url", url]
    return cli.main(["examples", *urls, "--project", str(root)])


def test_the_served_models_get_a_call_each_and_live_answers_where_a_sample_exists(
    fake: tuple[Fake, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = fake
    state.models = ["tiny", "iris"]
    assert run(url, tmp_path) == cli.OK
    out = capsys.readouterr().out
    assert f"curl -s -X POST {url}/predictions/tiny -d @request.json" in out
    assert f"curl -s '{url}/models/tiny?customized=true'" in out
    assert f"{url}/predictions/iris -H 'Content-Type: application/json'" in out
    assert "digits" not in out and "empty_model" not in out and "make stop" not in out
    assert out.split("Live answers:")[1].split() == ["iris:", "200", '{"model":', '"iris"}']
    assert set(state.posted) == {"iris"}
    assert not (tmp_path / "digit.png").exists()


def test_a_failed_live_answer_or_an_unhealthy_ping_is_exit_1(
    fake: tuple[Fake, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = fake
    state.models, state.status = ["iris", "empty_model"], {"iris": 503}
    assert run(url, tmp_path) == cli.FAILED
    assert "iris: 503" in capsys.readouterr().out
    state.status, state.ping = {}, 500
    assert run(url, tmp_path) == cli.FAILED
    assert "answers /ping with 500" in capsys.readouterr().out


def test_digits_gets_its_image_written_and_posted(
    fake: tuple[Fake, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = fake
    state.models = ["digits"]
    assert run(url, tmp_path) == cli.OK
    png = tmp_path / "digit.png"
    assert state.posted["digits"] == png.read_bytes() and png.read_bytes().startswith(b"\x89PNG")
    assert f"--data-binary @{png}" in capsys.readouterr().out


def test_a_digit_it_cannot_write_skips_that_example_and_says_why(
    fake: tuple[Fake, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def denied(path: Path, data: bytes) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "write_bytes", denied)  # tests may run as root: chmod is no test
    state, url = fake
    state.models = ["digits", "iris"]
    assert run(url, tmp_path) == cli.OK
    out = capsys.readouterr().out
    assert f"cannot write {tmp_path / 'digit.png'} (Permission denied): no digits example" in out
    assert "--data-binary" not in out and "digits" not in state.posted
    assert f"curl -s -X POST {url}/predictions/digits -d @request.json" in out


def test_no_server_is_exit_3_before_saying_it_is_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:9"  # discard: nothing listens there
    assert run(url, tmp_path) == cli.UNREACHABLE
    captured = capsys.readouterr()
    assert "is up" not in captured.out and "curl" not in captured.out
    assert f"no answer from {url}/ping" in captured.err
    assert not (tmp_path / "digit.png").exists()


def test_no_management_api_is_exit_3(
    fake: tuple[Fake, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = fake
    done = cli.main(["examples", "--inference-url", url, "--management-url", "http://127.0.0.1:9"])
    assert done == cli.UNREACHABLE
    assert "listing models: no answer from http://127.0.0.1:9" in capsys.readouterr().err


def test_samples_cover_the_example_models() -> None:
    assert set(examples.samples(None)) == {"iris", "empty_model"}


def test_without_the_examples_extra_the_digits_example_is_skipped_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ["sklearn", *[m for m in sys.modules if m.startswith("sklearn.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # as if scikit-learn were not installed
    monkeypatch.delitem(sys.modules, "servekit.datasets", raising=False)
    path, why = examples.write_digit(tmp_path)
    assert path is None and "torchserve-kit[examples]" in why
    assert not (tmp_path / "digit.png").exists()


def test_a_project_model_with_an_example_request_gets_a_live_answer(
    fake: tuple[Fake, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `servekit new-model` writes, examples/<model>.<suffix>, is posted as it is."""
    state, url = fake
    state.models = ["fraud", "photo", "tiny"]
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "fraud.json").write_text('{"features": [1.0, 2.0]}\n')
    (tmp_path / "examples" / "photo.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "examples" / "tiny.bin").write_bytes(b"unknown suffix: no sample")
    assert run(url, tmp_path) == cli.OK
    out = capsys.readouterr().out
    assert "fraud -H 'Content-Type: application/json' --data-binary @" in out
    assert "photo -H 'Content-Type: image/png' --data-binary @" in out
    assert state.posted == {"fraud": b'{"features": [1.0, 2.0]}\n', "photo": b"\x89PNG fake"}

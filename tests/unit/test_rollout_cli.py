"""servekit rollout: its inputs are checked before the server is touched (no server here: the
management URL is a port nobody listens on, so any call to it would exit 3, not 2)."""

from __future__ import annotations

import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from servekit.health.initlog import last_init_error, log_mark
from servekit.ops import rollout
from servekit.ops.frontend import _model_store, find_frontend
from servekit.serve.management import Management
from servekit.serve.server import free_ports

MANIFEST = {
    "runtime": "python",
    "model": {"modelName": "slow_model", "handler": "slow.py", "modelVersion": "2.0"},
    "archiverVersion": "0.12.0",
}


@pytest.fixture(scope="module")
def nobody() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def mar(path: Path, manifest: object | None = MANIFEST) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("slow.py", "pass\n")
        if manifest is not None:
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


def run(
    capsys: pytest.CaptureFixture[str], url: str, archive: Path, *extra: str
) -> tuple[int, str]:
    argv = ["slow_model", str(archive), "--management-url", url, "--inference-url", url]
    code = rollout.main([*argv, "--smoke-json", '{"value": 1}', *extra])
    return code, capsys.readouterr().err


def test_a_missing_archive_is_a_usage_error(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, nobody, tmp_path / "nope.mar")
    assert code == 2
    assert "nope.mar: no such file" in err and "Traceback" not in err


def test_a_file_that_is_not_a_zip(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "text.mar"
    path.write_text("not a zip\n")
    code, err = run(capsys, nobody, path)
    assert code == 2
    assert "text.mar is not a model archive" in err and "not a readable .mar" in err


def test_a_zip_without_manifest(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, nobody, mar(tmp_path / "bare.mar", None))
    assert code == 2
    assert "MAR-INF/MANIFEST.json" in err and "bare.mar" in err


@pytest.mark.parametrize("version", [None, "", "  ", 2.0])
def test_a_manifest_without_a_version(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str], version: object
) -> None:
    model = {k: v for k, v in MANIFEST["model"].items() if k != "modelVersion"}  # type: ignore[attr-defined]
    if version is not None:
        model["modelVersion"] = version
    code, err = run(capsys, nobody, mar(tmp_path / "nov.mar", {**MANIFEST, "model": model}))
    assert code == 2
    assert "nov.mar" in err
    assert "no model version" in err or "modelVersion is not a string" in err


@pytest.mark.parametrize("version", ["../x", "a/b", "3.0\n", "-1", ".hidden", "v 2", "x" * 65])
def test_a_version_a_path_or_a_header_would_escape_is_refused(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    model = {**MANIFEST["model"], "modelVersion": version}  # type: ignore[dict-item]
    code, err = run(capsys, nobody, mar(tmp_path / "odd.mar", {**MANIFEST, "model": model}))
    assert code == 2, err
    assert "is not 1-64 characters of A-Z a-z 0-9 . _ -" in err and "Traceback" not in err


def test_another_models_archive_is_refused(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = {**MANIFEST["model"], "modelName": "iris"}  # type: ignore[dict-item]
    code, err = run(capsys, nobody, mar(tmp_path / "iris.mar", {**MANIFEST, "model": model}))
    assert code == 2
    assert "iris.mar is an archive of model 'iris', not 'slow_model'" in err


def test_a_directory_is_not_an_archive(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(capsys, nobody, tmp_path)
    assert code == 2 and "is a directory: give the .mar file" in err


def test_a_good_archive_reaches_the_server(
    tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command with a good archive gets as far as the server: unreachable, 3."""
    code, err = run(capsys, nobody, mar(tmp_path / "good.mar"))
    assert code == 3
    assert nobody in err and "is TorchServe running?" in err


def test_smoke_body_checks(tmp_path: Path, nobody: str, capsys: pytest.CaptureFixture[str]) -> None:
    good = mar(tmp_path / "good.mar")
    base = ["slow_model", str(good), "--management-url", nobody, "--project", str(tmp_path)]
    assert rollout.main([*base, "--smoke-json", "{value"]) == 2
    assert "--smoke-json is not JSON" in capsys.readouterr().err
    assert rollout.main([*base, "--smoke", str(tmp_path / "none.json")]) == 2
    assert "cannot read smoke request" in capsys.readouterr().err
    assert rollout.main(base) == 2  # slow_model has no sample request: say what to give
    assert "give --smoke FILE or --smoke-json TEXT" in capsys.readouterr().err


def test_a_project_example_is_the_default_smoke_request(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "slow_model.json").write_text('{"value": 3}')
    args = rollout.build_parser().parse_args(["slow_model", "x.mar", "--project", str(tmp_path)])
    assert rollout.smoke_request(args) == rollout.Smoke(b'{"value": 3}', "application/json")
    iris = rollout.build_parser().parse_args(["iris", "x.mar", "--project", str(tmp_path)])
    smoke = rollout.smoke_request(iris)
    assert json.loads(smoke.body) == {"features": [5.1, 3.5, 1.4, 0.2]}


@pytest.mark.parametrize(
    "bad", [["--workers", "0"], ["--timeout", "-1"], ["--smoke", "a", "--smoke-json", "{}"]]
)
def test_bad_options_exit_2(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        rollout.main(["slow_model", "x.mar", *bad])
    assert stop.value.code == 2


def test_model_store_from_the_frontend_command_line(tmp_path: Path) -> None:
    (tmp_path / "ts.properties").write_text("model_store=store_from_config\n")
    assert _model_store(["java", "-s", "/srv/store", "-f", "x"], tmp_path) == Path("/srv/store")
    assert _model_store(["java", "-f", "ts.properties"], tmp_path) == tmp_path / "store_from_config"
    assert _model_store(["java", "-f", "missing.properties"], tmp_path) is None
    assert find_frontend("http://127.0.0.1:1") is None


LINE = (
    "{t} [INFO ] W-9001-slow_model_{v}-stdout MODEL_LOG - "
    "Failed to load model slow_model, exception {r}"
)


def test_init_errors_of_one_version_after_a_mark(tmp_path: Path) -> None:
    """The rollout asks the log only about the new version, and only since it registered it."""
    model_log = tmp_path / "model_log.log"
    model_log.write_text(LINE.format(t="2026-12-02T10:00:00,000", v="2.0", r="stale") + "\n")
    mark = log_mark(tmp_path)
    assert last_init_error(tmp_path, "slow_model", "2.0", mark) is None
    assert last_init_error(tmp_path, "slow_model", "2.0") == "stale"
    with model_log.open("a") as log:
        log.write(LINE.format(t="2026-12-02T10:00:05,000", v="1.0", r="old version") + "\n")
    assert last_init_error(tmp_path, "slow_model", "2.0", mark) is None
    assert last_init_error(tmp_path, "slow_model", "1.0", mark) == "old version"
    with model_log.open("a") as log:
        log.write(LINE.format(t="2026-12-02T10:00:06,000", v="2.0", r="fresh") + "\n")
    assert last_init_error(tmp_path, "slow_model", "2.0", mark) == "fresh"
    model_log.write_text("")  # rolled over: read from its start again
    assert last_init_error(tmp_path, "slow_model", "2.0", mark) is None


def test_a_smoke_request_not_answered_in_time_fails_the_rollout(tmp_path: Path) -> None:
    """A version that takes the request and never answers is a failed rollout (exit 1, rolled
    back), not an unreachable server."""
    stop = threading.Event()

    class Silent(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            stop.wait(5)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        done = rollout.Rollout(Management(url), "slow_model", url, tmp_path, None, timeout=0.5)
        with pytest.raises(
            rollout.RolloutFailed,
            match=r"slow_model 2.0: the smoke request was not answered within 0.5 s",
        ):
            done._smoke("2.0", rollout.Smoke(b"{}", "application/json"))
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()

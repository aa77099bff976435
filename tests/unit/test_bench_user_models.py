"""The benchmark commands on a user's project, not only this repository's example models:
``tune`` and ``limit`` take ``--payload``, ``limit`` any archive of the project, ``bench-ops``
says up front that it measures the demo models. No server is started here."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from servekit import cli
from servekit.bench import ops, profile, tune
from servekit.errors import ToolkitError
from servekit.serve.settings import Setting


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project with a config.properties and an archive named tiny."""
    root = tmp_path / "project"
    (root / "model_store").mkdir(parents=True)
    (root / "config.properties").write_text("inference_address=http://127.0.0.1:8080\n")
    (root / "model_store" / "tiny.mar").write_bytes(b"not really an archive")
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


class Stop(ToolkitError):
    """Raised by the fake measure: the test has seen what it needed."""


def test_tune_sends_the_payload_file(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = project / "body.json"
    body.write_text('{"x": 1}')
    seen: dict[str, Any] = {}

    def fake_trials(*args: Any, **kwargs: Any) -> None:
        seen["bodies"], seen["content_type"] = args[3], args[4]
        raise Stop("measured nothing")

    monkeypatch.setattr(tune, "archived_setting", lambda root, model: Setting(1, 5, 1))
    monkeypatch.setattr(tune, "ServedTrials", fake_trials)
    code, err = run(
        ["tune", "--model", "tiny", "--payload", str(body), "--project", str(project)], capsys
    )
    assert code == cli.FAILED and "measured nothing" in err
    assert seen == {"bodies": (b'{"x": 1}',), "content_type": "application/json"}


@pytest.mark.parametrize("name", ["tune", "profile"])
def test_a_missing_payload_file_is_named_before_a_server_starts(
    name: str, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(profile, "py_spy", lambda: "py-spy")  # found or not, not this test's
    missing = project / "nosuch.json"
    args = [name, "--model", "tiny", "--payload", str(missing), "--project", str(project)]
    code, err = run(args, capsys)
    assert code == cli.USAGE
    assert err.strip() == f"servekit {name}: payload file {missing} does not exist"


def test_tune_without_a_built_in_payload_says_to_pass_one(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["tune", "--model", "tiny", "--project", str(project)], capsys)
    assert code == cli.USAGE
    assert "no built-in payload for model 'tiny'" in err and "--payload FILE" in err


@pytest.fixture
def echo_mar(tmp_path: Path) -> Path:
    """A real model archive of a model named tiny: its handler answers each body's length."""
    mar = tmp_path / "echo.mar"
    manifest = {"runtime": "python", "model": {"modelName": "tiny", "handler": "echo.py"}}
    with zipfile.ZipFile(mar, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        archive.writestr(
            "echo.py",
            "def handle(data, context):\n"
            "    return None if data is None else [len(row['body']) for row in data]\n",
        )
    return mar


def test_limit_sends_the_payload_file_to_any_archive(
    echo_mar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"x": 1}')
    args = ["limit", "--mar", str(echo_mar), "--payload", str(body), "--duration", "0.1"]
    code = cli.main([*args, "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == cli.OK, err
    result = json.loads(out)
    assert result["batch_size"] == 2 and result["items"] >= 2


def test_limit_without_a_payload_for_the_model_says_to_pass_one(
    echo_mar: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["limit", "--mar", str(echo_mar)], capsys)
    assert code == cli.USAGE
    assert "no built-in payload for model 'tiny'" in err and "--payload FILE" in err


def test_limit_names_a_file_that_is_not_a_mar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    code, err = run(["limit", "--mar", str(text)], capsys)
    assert code == cli.USAGE
    assert err.startswith(f"servekit limit: {text}: not a readable .mar (zip) file")
    assert "Traceback" not in err


def test_limit_takes_a_model_of_the_project(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["limit", "--model", "tiny", "--project", str(project)], capsys)
    assert code == cli.USAGE
    assert f"{project / 'model_store' / 'tiny.mar'}: not a readable .mar" in err


def test_bench_ops_refuses_a_project_without_the_demo_models(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "config").mkdir()
    (project / "config" / "slow_model.yml").write_text("name: slow_model\n")
    code, err = run(["bench-ops", "--project", str(project)], capsys)
    assert code == cli.USAGE
    assert "bench-ops measures the toolkit's own demo models" in err
    assert "no leaky_model.yml, empty_model.yml, failing_model.yml" in err
    assert not list((project / "model_store").glob("*.mar.sha256"))  # nothing was built


FAKE_OPS = """
import sys, tempfile, time
from servekit.bench import ops

def measure(project, command_line):
    with tempfile.TemporaryDirectory(prefix="bench-ops-", dir=sys.argv[2]) as tmp:
        print(tmp, flush=True)
        time.sleep(120)

ops.measure = measure
sys.exit(ops.main(["--project", sys.argv[1]]))
"""


def test_bench_ops_cleans_up_on_sigterm(project: Path, tmp_path: Path) -> None:
    (project / "config").mkdir()
    for model in ops.DEMO_MODELS:
        (project / "config" / f"{model}.yml").write_text(f"name: {model}\n")
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_OPS, str(project), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    workdir = Path(process.stdout.readline().strip())
    assert workdir.is_dir()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert not workdir.exists()  # the with blocks ran: servers stopped, temp dir removed

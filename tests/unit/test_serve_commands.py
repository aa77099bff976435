"""The serving and health subcommands on a project: ``--project`` from any directory, the
current directory otherwise, and a clear usage error (exit 2) when there is no project."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from servekit import cli
from tests.unit.test_archive_reproducible import checkout

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the iris model's project, archived once with ``servekit archive``."""
    root = checkout(tmp_path_factory.mktemp("project"), 1_234_567_890)
    (root / "config.properties").write_text("inference_address=http://127.0.0.1:8080\n")
    assert cli.main(["archive", "--project", str(root)]) == cli.OK
    return root


def test_archive_builds_into_the_projects_store_from_another_directory(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (project / "model_store" / "iris.mar").is_file()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["archive", "iris", "--project", str(project)]) == cli.OK
    assert capsys.readouterr().out.split() == ["iris", "up", "to", "date", "model_store/iris.mar"]
    assert not (tmp_path / "model_store").exists()


def test_archive_works_on_the_current_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    assert cli.main(["archive"]) == cli.OK
    assert "iris" in capsys.readouterr().out


def test_archive_of_an_unknown_model_names_the_known_ones(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["archive", "irsi", "--project", str(project)]) == cli.USAGE
    err = capsys.readouterr().err
    assert "no spec" in err and "irsi" in err and "there are: iris" in err


def test_inspect_by_name_reads_the_projects_store(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", "iris", "--json", "--project", str(project)]) == cli.OK
    report = json.loads(capsys.readouterr().out)
    assert report["matches_spec"] is True
    assert report["file"] == str(project / "model_store" / "iris.mar")
    monkeypatch.chdir(project)
    assert cli.main(["inspect", "iris"]) == cli.OK


def test_inspect_of_a_missing_archive_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect", "digits", "--project", str(project)]) == cli.USAGE
    assert "digits.mar" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["archive"],
        ["inspect", "iris"],
        ["examples"],
        ["health"],
    ],
)
def test_a_missing_project_is_a_clear_usage_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    assert cli.main([*argv, "--project", str(nowhere)]) == cli.USAGE
    err = capsys.readouterr().err
    assert f"{nowhere} does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["archive"], ["inspect", "iris"]])
def test_a_directory_that_is_not_a_project_says_what_to_do(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == cli.USAGE
    assert "not a servekit project" in capsys.readouterr().err


def test_inspect_of_a_file_needs_no_project(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no project here: the spec check reports the missing spec
    assert cli.main(["inspect", str(project / "model_store" / "iris.mar")]) == cli.FAILED
    assert "no spec" in capsys.readouterr().out


def test_health_needs_no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a probe in a pod runs outside any project
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["health", "--inference-url", url, "--management-url", url, "--timeout", "1"]
    assert cli.main(argv) == cli.UNREACHABLE


def test_recycle_needs_a_limit_and_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recycle", "--model", "iris"]) == cli.USAGE
    assert "--max-memory-mb" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["recycle", "--model", "iris", "--max-requests", "5", "--management-url", url]
    assert cli.main(argv) == cli.UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("servekit recycle: error:") and "Traceback" not in err


def test_examples_names_a_dead_server_and_writes_nothing_into_the_project(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["examples", "--inference-url", url, "--project", str(project)]
    assert cli.main(argv) == cli.UNREACHABLE
    assert not (project / "digit.png").exists()
    assert f"{url}/ping" in capsys.readouterr().err


def test_the_probe_script_runs_from_the_installed_package(tmp_path: Path) -> None:
    # what the images' probes run: no sys.path tricks, any working directory
    script = ROOT / "scripts" / "health_check.py"
    assert "sys.path" not in script.read_text()
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: health_check.py")

"""How servekit.serve.server writes each private TorchServe's config (e2e tests run them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servekit.errors import ServerError
from servekit.serve import server
from servekit.serve.server import TorchServe, absolute_log_config, read_properties

ROOT = Path(__file__).resolve().parent.parent.parent


OPTION = "-Dlog4j.configurationFile="


@pytest.mark.parametrize(
    "vmargs, expected",
    [
        (f"{OPTION}config/log4j2.xml", f"{OPTION}/p/config/log4j2.xml"),
        (f"-Xmx2g {OPTION}a.xml -Dx=1", f"-Xmx2g {OPTION}/p/a.xml -Dx=1"),
        (f"{OPTION}/etc/log4j2.xml", f"{OPTION}/etc/log4j2.xml"),
        (f"{OPTION}file:///x.xml", f"{OPTION}file:///x.xml"),
        ("-Xmx2g", "-Xmx2g"),
    ],
)
def test_a_relative_log_config_is_resolved_from_the_configs_directory(
    vmargs: str, expected: str
) -> None:
    assert absolute_log_config(vmargs, Path("/p")) == expected


def test_a_private_server_gets_the_projects_log_config_by_absolute_path(tmp_path: Path) -> None:
    ts = TorchServe(ROOT / "config.properties", tmp_path / "ts")
    ts.workdir.mkdir()
    written = read_properties(ts.write_config().read_text())
    path = written["vmargs"].removeprefix(OPTION)
    assert path == str(ROOT / "config" / "log4j2.xml") and Path(path).is_file()


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_launcher_beside_the_interpreter_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside = executable(tmp_path / "venv" / "torchserve", "#!/bin/sh\n")
    executable(tmp_path / "path" / "torchserve", "#!/bin/sh\n")
    monkeypatch.setattr("servekit.serve.server.sys.executable", str(tmp_path / "venv" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert server.launcher() == str(beside)


def test_the_launcher_on_path_serves_an_interpreter_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = executable(tmp_path / "path" / "torchserve", "#!/bin/sh\n")
    monkeypatch.setattr("servekit.serve.server.sys.executable", str(tmp_path / "usr" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert server.launcher() == str(on_path)


def test_no_launcher_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("servekit.serve.server.sys.executable", str(tmp_path / "usr" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ServerError, match=r"pip install torchserve\) or put .* on PATH"):
        TorchServe(ROOT / "config.properties", tmp_path / "ts").start()


def test_a_server_that_exits_at_start_says_why_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "#!/bin/sh\necho starting\necho 'Invalid config: no such key_file' >&2\nexit 1\n"
    fake = executable(tmp_path / "bin" / "torchserve", script)
    monkeypatch.setattr(server, "launcher", lambda: str(fake))
    ts = TorchServe(ROOT / "config.properties", tmp_path / "ts")
    with ts, pytest.raises(ServerError) as raised:
        ts.wait_until_up(timeout=30)
    shutil.rmtree(ts.workdir)  # what a bench run does on its way out
    message = str(raised.value)
    assert message.startswith("TorchServe exited with 1 at start; the end of ")
    assert message.endswith("console.log:\nstarting\nInvalid config: no such key_file")

"""The ``servekit`` command: its dispatcher, each subcommand's ``--help``, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servekit import cli
from servekit.errors import ConfigError, ServerError, Unreachable


def test_no_command_prints_the_usage_and_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([]) == cli.USAGE
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == cli.OK
    assert "commands:" in capsys.readouterr().out
    assert cli.main(["--version"]) == cli.OK
    assert capsys.readouterr().out.startswith("servekit ")


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["valdate"]) == cli.USAGE
    assert "unknown command 'valdate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([name, "--help"]) == cli.OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: servekit {name}"), out[:200]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_refuses_an_unknown_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([name, "--no-such-option"]) == cli.USAGE
    assert "Traceback" not in capsys.readouterr().err


class _Raising:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def main(self, argv: list[str]) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("config.properties: job_queue_size is 'x'"), cli.USAGE),
        (Unreachable("no answer from http://127.0.0.1:8081"), cli.UNREACHABLE),
        (ServerError("TorchServe exited with 1"), cli.FAILED),
    ],
)
def test_toolkit_errors_become_one_line_and_an_exit_code(
    error: Exception, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.importlib, "import_module", lambda _: _Raising(error))
    assert cli.main(["validate"]) == code
    assert capsys.readouterr().err == f"servekit validate: {error}\n"


def test_a_missing_extra_is_named_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(_: str) -> object:
        raise ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp")

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["bench"]) == cli.USAGE
    assert "pip install 'torchserve-kit[bench]'" in capsys.readouterr().err


def test_the_module_runs_as_a_program(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "servekit.cli", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.split()[0]) == (0, "servekit")


def test_the_dispatcher_imports_no_command() -> None:
    """``servekit --help`` stays fast: no subcommand (torch, requests) is imported for it."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, servekit.cli; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = done.stdout
    assert "'torch'" not in loaded and "'requests'" not in loaded


BIG = (
    "import sys, types; from servekit import cli; m = types.ModuleType('big'); "
    "m.main = lambda argv: [print('x' * 1000) for _ in range(10_000)] and 0; "
    "sys.modules['big'] = m; cli.COMMANDS['big'] = cli.Command('big', 'prints 10 MB'); "
    "sys.exit(cli.main(['big']))"
)


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    """``servekit show-config iris | head -1``: no BrokenPipeError traceback, exit 0."""
    done = subprocess.run(
        f'\'{sys.executable}\' -c "{BIG}" | head -1; echo "exit ${{PIPESTATUS[0]}}"',
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        executable="/bin/bash",
    )
    assert done.stdout.splitlines()[-1] == "exit 0" and done.stderr == "", done.stderr


@pytest.mark.parametrize("args", ["--version", "--help", "", "validate --help"])
def test_a_reader_gone_before_the_first_write_is_no_error(args: str, tmp_path: Path) -> None:
    """``servekit --version | true``: the output is flushed inside main, not at exit."""
    done = subprocess.run(
        f"'{sys.executable}' -m servekit.cli {args} | head -c 0; echo \"exit ${{PIPESTATUS[0]}}\"",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        executable="/bin/bash",
    )
    code = "2" if args == "" else "0"
    assert (done.stdout.strip(), done.stderr) == (f"exit {code}", ""), done.stderr


def test_a_file_the_command_cannot_use_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    denied = PermissionError(13, "Permission denied", "model_store/iris.mar")
    monkeypatch.setattr(cli.importlib, "import_module", lambda _: _Raising(denied))
    assert cli.main(["archive"]) == cli.USAGE
    assert capsys.readouterr().err == "servekit archive: model_store/iris.mar: Permission denied\n"

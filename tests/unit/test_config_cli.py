"""The config subcommands (validate, show-config, config-docs) as a user runs them:
``--help``, usage errors, ``--project`` from another directory, a missing project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servekit.config import schema_docs, show, validate

ROOT = Path(__file__).resolve().parent.parent.parent
COMMANDS: dict[str, list[str]] = {
    "validate": [],
    "show-config": ["iris"],
    "config-docs": ["--check"],
}


def servekit(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_names_the_command(command: str) -> None:
    done = servekit(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: servekit {command} ") and "--project DIR" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_option_exits_2(command: str) -> None:
    done = servekit(command, *COMMANDS[command], "--no-such-flag")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"usage: servekit {command}" in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_project_from_another_directory(command: str, tmp_path: Path) -> None:
    done = servekit(command, *COMMANDS[command], "--project", ROOT, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["cwd", "missing", "not-a-project"])
def test_no_project_is_one_clear_line_and_exit_2(command: str, where: str, tmp_path: Path) -> None:
    projects: dict[str, list[str | Path]] = {
        "cwd": [],
        "missing": ["--project", tmp_path / "nope"],
        "not-a-project": ["--project", tmp_path],
    }
    project = projects[where]
    done = servekit(command, *COMMANDS[command], *project, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"servekit {command}: ")
    assert "does not exist" in line if where == "missing" else "pass --project DIR" in line


@pytest.mark.parametrize("main", [validate.main, show.main, schema_docs.main])
def test_main_is_callable_in_process(main: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])  # type: ignore[operator]
    assert caught.value.code == 0 and "--project" in capsys.readouterr().out


def test_config_docs_prints_writes_and_checks_a_file(tmp_path: Path) -> None:
    out = tmp_path / "keys.md"
    printed = servekit("config-docs", cwd=tmp_path)  # printing needs no project
    assert printed.returncode == 0 and printed.stdout == schema_docs.render()
    assert servekit("config-docs", "--check", "--out", out, cwd=tmp_path).returncode == 1
    done = servekit("config-docs", "--write", "--out", out, cwd=tmp_path)
    assert done.returncode == 0 and out.read_text() == schema_docs.render()
    assert servekit("config-docs", "--check", "--out", out, cwd=tmp_path).returncode == 0
    assert servekit("config-docs", "--out", out).returncode == 2  # --out alone: which mode?


def test_config_docs_write_goes_to_the_projects_docs(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("")
    done = servekit("config-docs", "--write", "--project", tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "docs" / "config-keys.md").read_text() == schema_docs.render()


def test_spec_paths_resolve_against_the_project_not_the_cwd(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "config").mkdir(parents=True)
    (project / "handlers").mkdir()
    (project / "config.properties").write_text("")
    (project / "handlers" / "h.py").write_text("class H:\n    pass\n")
    (project / "config" / "m.yml").write_text('name: m\nversion: "1.0"\nhandler: handlers/h.py\n')
    done = servekit("validate", "--json", "--project", project, project / "config" / "m.yml")
    assert done.returncode == 0, done.stdout
    done = servekit("show-config", "m", "--project", project, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_handlers_imports_the_projects_package_without_sys_path(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "config").mkdir(parents=True)
    (project / "handlers").mkdir()
    (project / "config.properties").write_text("")
    (project / "handlers" / "opts.py").write_text(
        "import dataclasses\nfrom servekit.runtime.options import HandlerOptions\n\n\n"
        "@dataclasses.dataclass(frozen=True)\nclass Opts(HandlerOptions):\n    top_k: int = 1\n"
    )
    (project / "handlers" / "h.py").write_text(
        "import sys\nfrom handlers.opts import Opts\n\n"
        f"assert {str(project)!r} not in sys.path, 'the project is not on sys.path'\n\n\n"
        "class H:\n    options_class = Opts\n"
    )
    (project / "config" / "m.yml").write_text(
        'name: m\nversion: "1.0"\nhandler: handlers/h.py\nhandler_options:\n  top_kk: 2\n'
    )
    done = servekit("validate", "--json", "--import-handlers", "--project", project, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert '"fix": "did you mean \'top_k\'?"' in done.stdout

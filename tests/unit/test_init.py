"""``servekit init DIR``: the files of a new project, that it validates, archives and has a
working Makefile; what it refuses, what it keeps, and that a failure leaves nothing behind."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import servekit
from servekit import cli
from servekit.config import validate
from servekit.config.properties import property_values
from servekit.scaffold import init
from servekit.serve import archive

ROOT = Path(__file__).resolve().parent.parent.parent
FILES = [
    ".gitignore",
    "Makefile",
    "README.md",
    "config.properties",
    "config/log4j2.xml",
    "handlers/__init__.py",
    "model-config.yml",
    "model_store/.gitkeep",
    "pytest.ini",
    "requirements.txt",
    "tests/conftest.py",
    "tests/test_project.py",
]
TARGETS = ["help", "install", "validate", "archive", "serve", "stop", "health", "test", "clean"]


@pytest.fixture(autouse=True)
def _not_a_sub_make(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `make test` the parent make's flags reach these `make` runs (and `make[1]:
    Entering directory` lines in their output): run them as a user's shell would."""
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        monkeypatch.delenv(name, raising=False)


def files_in(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def made(tmp_path: Path, name: str = "project") -> Path:
    assert cli.main(["init", str(tmp_path / name)]) == cli.OK
    return tmp_path / name


def test_makes_every_file_and_the_missing_parents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "a" / "b" / "project"
    assert cli.main(["init", str(root)]) == cli.OK
    assert files_in(root) == FILES  # no staging directory left behind
    out = capsys.readouterr().out
    assert all(f"  {name}\n" in out for name in FILES)
    assert f"cd {root}\n" in out and "servekit new-model NAME" in out and "make serve" in out


def test_requirements_pin_this_servekit(tmp_path: Path) -> None:
    lines = (made(tmp_path) / "requirements.txt").read_text().splitlines()
    assert f"{init.distribution()}=={servekit.__version__}" in lines
    assert init.distribution() == "torchserve-kit"
    assert any(line.startswith("pytest==") for line in lines)


def test_the_server_config_is_the_repos_but_serves_every_archive(tmp_path: Path) -> None:
    root = made(tmp_path)
    ours = property_values((root / "config.properties").read_text())
    repo = property_values((ROOT / "config.properties").read_text())
    assert ours.pop("load_models") == "all"
    repo.pop("load_models")
    assert ours == repo
    for name in ("model-config.yml", "config/log4j2.xml"):
        assert (root / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_the_new_project_validates_with_no_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = made(tmp_path)
    capsys.readouterr()
    files = [str(root / "config.properties"), str(root / "model-config.yml")]
    assert validate.main(["--project", str(root), *files]) == 0
    assert capsys.readouterr().out == "2 file(s): 0 error(s), 0 warning(s)\n"


def test_archive_on_the_new_project_builds_nothing_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = made(tmp_path)
    assert archive.main(["--project", str(root)]) == 0
    assert "nothing to archive" in capsys.readouterr().out
    assert files_in(root / "model_store") == [".gitkeep"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_parses_and_lists_its_targets(tmp_path: Path) -> None:
    root = made(tmp_path)
    tools = ["SERVEKIT=/opt/venv/bin/servekit", "PYTHON=/opt/venv/bin/python"]
    for target in TARGETS:
        done = subprocess.run(
            ["make", "-n", "-f", "Makefile", target, *tools],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, (target, done.stderr)
        assert "/usr/bin/python3" not in done.stdout
    listed = subprocess.run(["make"], cwd=root, capture_output=True, text=True, check=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout)
    assert [line.split()[0] for line in plain.splitlines()] == TARGETS
    serve = subprocess.run(
        ["make", "-n", "serve", *tools], cwd=root, capture_output=True, text=True, check=True
    )
    assert "/opt/venv/bin/servekit health --inference-url http://127.0.0.1:8080" in serve.stdout
    assert "torchserve --start --ncs --ts-config config.properties" in serve.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_follows_the_addresses_of_config_properties(tmp_path: Path) -> None:
    root = made(tmp_path)
    config = root / "config.properties"
    config.write_text(config.read_text().replace("127.0.0.1:8081", "127.0.0.1:18081"))
    done = subprocess.run(["make", "-n", "health"], cwd=root, capture_output=True, text=True)
    assert "--management-url http://127.0.0.1:18081" in done.stdout, done.stderr


def test_the_readme_gives_the_three_commands(tmp_path: Path) -> None:
    readme = (made(tmp_path, "my-models") / "README.md").read_text()
    assert readme.startswith("# my-models\n")
    for command in ("servekit init my-models", "servekit new-model NAME", "make serve"):
        assert command in readme


def test_init_into_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "."]) == cli.OK
    assert files_in(tmp_path) == FILES
    assert "cd " not in capsys.readouterr().out


def test_a_directory_with_files_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    assert cli.main(["init", str(tmp_path)]) == cli.USAGE
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "is not empty" in err and "--force" in err
    assert files_in(tmp_path) == ["notes.txt"]


def test_force_adds_the_missing_files_and_keeps_every_existing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "iris.yml").write_text("name: iris\n")
    (tmp_path / "Makefile").write_text("all:\n\techo mine\n")
    assert cli.main(["init", str(tmp_path), "--force"]) == cli.OK
    assert (tmp_path / "README.md").read_text() == "mine\n"
    assert (tmp_path / "config" / "iris.yml").read_text() == "name: iris\n"
    assert (tmp_path / "Makefile").read_text() == "all:\n\techo mine\n"
    assert (tmp_path / "config" / "log4j2.xml").is_file()
    assert files_in(tmp_path) == sorted([*FILES, "config/iris.yml"])
    out = capsys.readouterr().out
    assert "Kept (already there, not overwritten): Makefile, README.md" in out


def test_a_file_is_not_a_project_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("")
    assert cli.main(["init", str(tmp_path / "taken"), "--force"]) == cli.USAGE
    assert "is a file, not a directory" in capsys.readouterr().err


def test_a_file_where_a_directory_goes_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "handlers").write_text("")
    assert cli.main(["init", str(tmp_path), "--force"]) == cli.USAGE
    assert f"{tmp_path / 'handlers'} is a file" in capsys.readouterr().err
    assert files_in(tmp_path) == ["handlers"]


@pytest.mark.parametrize("what", ["a linked directory", "a dangling link", "a directory"])
def test_force_never_writes_through_a_link_nor_keeps_a_non_file(
    tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by review: `init --force` wrote handlers/__init__.py through a link to /etc, and
    kept a dangling link or a directory named config.properties as if it were the config."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    if what == "a linked directory":
        (project / "handlers").symlink_to(outside)
    elif what == "a dangling link":
        (project / "config.properties").symlink_to(tmp_path / "nowhere")
    else:
        (project / "config.properties").mkdir()
    before = files_in(project)
    assert cli.main(["init", str(project), "--force"]) == cli.USAGE
    err = capsys.readouterr().err
    assert "is a link" in err or "is not a regular file" in err
    assert files_in(project) == before and not list(outside.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory")
def test_an_unwritable_parent_is_bad_input_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert cli.main(["init", str(parent / "project")]) == cli.USAGE
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err
    assert "Permission denied" in err and "nothing was written" in err
    assert list(parent.iterdir()) == []


def test_a_directory_it_may_not_create_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unwritable parent, also where the tests run as root (chmod stops no root)."""

    def denied(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert cli.main(["init", str(tmp_path / "project")]) == cli.USAGE
    err = capsys.readouterr().err
    assert f"{tmp_path / 'project'}: Permission denied" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    writes = {"n": 0}
    write_bytes = Path.write_bytes

    def full(path: Path, data: bytes) -> int:
        writes["n"] += 1
        if writes["n"] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert cli.main(["init", str(tmp_path / "new" / "project")]) == cli.USAGE
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the directories init made are gone too


def test_a_failed_move_takes_back_what_was_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "iris.yml").write_text("name: iris\n")
    renames = {"n": 0}
    rename = os.rename

    def failing(source: Path, destination: Path) -> None:
        renames["n"] += 1
        if renames["n"] == 4:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(destination))
        rename(source, destination)

    monkeypatch.setattr(os, "rename", failing)
    assert cli.main(["init", str(tmp_path), "--force"]) == cli.USAGE
    assert "Input/output error" in capsys.readouterr().err
    assert files_in(tmp_path) == ["config/iris.yml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]

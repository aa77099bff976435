"""``servekit archive`` on a user's project: what it ships, when it rebuilds, and how it fails
(one line and an exit code, never a traceback; one bad spec does not block the others)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from servekit import cli
from servekit.serve import archive
from tests.unit.test_archive_reproducible import checkout

IRIS = "config/iris.yml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The iris project with a handler subpackage, a cache and a second spec (``other``)."""
    root = checkout(tmp_path / "project", 1_234_567_890)
    (root / "config.properties").write_text("inference_address=http://127.0.0.1:8080\n")
    common = root / "handlers" / "common"
    common.mkdir()
    (common / "__init__.py").write_text("")
    (common / "util.py").write_text("def double(x: int) -> int:\n    return 2 * x\n")
    (common / "__pycache__").mkdir()
    (common / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    other = (root / IRIS).read_text().replace("name: iris", "name: other")
    (root / "config" / "other.yml").write_text(other)
    return root


def run(root: Path, *args: str) -> int:
    return cli.main(["archive", "--project", str(root), *args])


def test_the_whole_handlers_tree_is_shipped_without_caches(project: Path) -> None:
    assert run(project, "iris") == cli.OK
    names = zipfile.ZipFile(project / "model_store" / "iris.mar").namelist()
    assert "handlers/common/__init__.py" in names
    assert "handlers/common/util.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_a_change_in_a_handler_subpackage_rebuilds(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(project, "iris") == cli.OK
    (project / "handlers" / "common" / "util.py").write_text("def double(x): return x + x\n")
    capsys.readouterr()
    assert run(project, "iris") == cli.OK
    assert capsys.readouterr().out.split()[:2] == ["iris", "built"]


@pytest.mark.parametrize("damage", [b"garbage", None])
def test_a_corrupt_or_truncated_archive_is_rebuilt(
    project: Path, capsys: pytest.CaptureFixture[str], damage: bytes | None
) -> None:
    assert run(project, "iris") == cli.OK
    mar = project / "model_store" / "iris.mar"
    good = mar.read_bytes()
    mar.write_bytes(good[: len(good) // 2] if damage is None else damage)
    capsys.readouterr()
    assert run(project, "iris") == cli.OK
    assert capsys.readouterr().out.split()[:2] == ["iris", "built"]
    assert mar.read_bytes() == good


def test_an_archive_without_its_recorded_sha256_is_rebuilt(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(project, "iris") == cli.OK
    (project / "model_store" / "iris.mar.sha256").unlink()
    capsys.readouterr()
    assert run(project, "iris") == cli.OK
    assert capsys.readouterr().out.split()[:2] == ["iris", "built"]


def test_names_load_only_their_specs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "config" / "broken.yml").write_text("name: broken\nversion: '1'\nhandler: nosuch\n")
    assert run(project, "iris") == cli.OK
    assert capsys.readouterr().out.split()[:1] == ["iris"]


def test_a_failing_spec_does_not_stop_the_others(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "config" / "broken.yml").write_text("name: broken\nversion: '1'\nhandler: nosuch\n")
    bad = (project / IRIS).read_text().replace("name: iris", "name: bad name")
    (project / "config" / "bad name.yml").write_text(bad)
    assert run(project) == cli.USAGE  # only bad specs failed: bad input, as show-config says
    out, err = capsys.readouterr()
    states = dict(line.split()[:2] for line in out.splitlines() if not line.startswith("bad"))
    assert states == {"broken": "FAILED", "iris": "built", "other": "built"}
    assert "bad name" in out and out.count("FAILED") == 2
    assert "Traceback" not in err and 'File "' not in err
    assert "bad name" in err and "broken.yml" in err
    assert err.splitlines()[-1] == "servekit archive: error: 2 of 4 failed: bad name, broken"


def test_an_archiver_failure_is_its_last_error_line_and_the_others_build(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = subprocess.run

    def run_archiver(command: list[str], **kwargs: Any) -> Any:
        if command[command.index("--model-name") + 1] != "iris":
            return real(command, **kwargs)
        return subprocess.CompletedProcess(command, 1, "", TRACEBACK)

    monkeypatch.setattr("servekit.serve.archive.subprocess.run", run_archiver)
    assert run(project) == cli.FAILED
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["iris", "FAILED"],
        ["other", "built"],
    ]
    assert err.splitlines() == [
        f"servekit archive: error: torch-model-archiver failed for 'iris' ({project / IRIS}): "
        "ModelArchiverError: Model name contains special characters. The allowed regular "
        "expression filter for model name is: ^[A-Za-z0-9]$",
        "servekit archive: error: 1 of 2 failed: iris",
    ]


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in <module>\n'
    "    raise ModelArchiverError(\n"
    "model_archiver.model_archiver_error.ModelArchiverError: Model name contains special "
    "characters.\nThe allowed regular expression filter for model name is: ^[A-Za-z0-9]$\n"
)


def test_an_archiver_traceback_becomes_its_last_error_line() -> None:
    assert archive.archiver_error(TRACEBACK) == (
        "ModelArchiverError: Model name contains special characters. The allowed regular "
        "expression filter for model name is: ^[A-Za-z0-9]$"
    )
    assert archive.archiver_error("just a line\n") == "just a line"
    assert archive.archiver_error("") == "it failed with no output"


def test_a_store_that_is_a_file_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = project / "store"
    store.write_text("")
    assert run(project, "--store", str(store)) == cli.USAGE
    assert "is not a directory" in capsys.readouterr().err


def test_a_store_it_cannot_write_is_exit_2_naming_it(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "servekit.serve.archive.os.access", lambda path, mode: False
    )  # tests may run as root
    assert run(project, "iris") == cli.USAGE
    err = capsys.readouterr().err
    assert err == f"servekit archive: error: {project / 'model_store'}: Permission denied\n"


def test_a_handler_it_cannot_read_is_exit_2_naming_it(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = project / "handlers" / "iris.py"
    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == handler:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert run(project, "iris") == cli.USAGE
    assert capsys.readouterr().err == f"servekit archive: error: {handler}: Permission denied\n"


def test_a_project_directory_it_cannot_list_is_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def glob(path: Path, pattern: str) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "glob", glob)
    assert run(project) == cli.USAGE
    assert "Permission denied" in capsys.readouterr().err


def test_a_spec_whose_weights_are_missing_is_bad_input(project: Path) -> None:
    shutil.rmtree(project / "models")
    assert run(project, "iris") == cli.USAGE


def test_inspect_with_defaults_that_are_not_a_mapping_is_bad_input(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(project, "iris") == cli.OK
    defaults = project / "defaults.yml"
    defaults.write_text("- a list\n")
    capsys.readouterr()
    code = cli.main(["inspect", "iris", "--project", str(project), "--defaults", str(defaults)])
    assert code == cli.USAGE  # was 1: a bad defaults file was reported as an unreadable .mar
    assert "defaults.yml" in capsys.readouterr().err

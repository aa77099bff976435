"""Mistakes a hostile review found the config commands let through or crashed on: files that
are YAML but not a mapping, unreadable projects, specs archive or TorchServe refuse, handler
imports an archived model cannot satisfy, path-like model names."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from servekit.config import schema_docs, show, validate
from servekit.config.findings import Finding
from servekit.config.specs import config_sources, effective_config, load_spec, read_yaml
from servekit.config.validate import validate_paths
from servekit.errors import ConfigError
from servekit.project import NotAProject, Project

HANDLER = "class Tiny:\n    pass\n"
SPEC = 'name: tiny\nversion: "1.0"\nhandler: handlers/tiny.py\n'


def servekit(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A one-model project outside the repo."""
    root = tmp_path / "p"
    (root / "config").mkdir(parents=True)
    (root / "handlers").mkdir()
    (root / "config.properties").write_text("load_models=tiny.mar\n")
    (root / "model-config.yml").write_text("minWorkers: 1\nmaxWorkers: 1\n")
    (root / "handlers" / "__init__.py").write_text("")
    (root / "handlers" / "tiny.py").write_text(HANDLER)
    (root / "config" / "tiny.yml").write_text(SPEC)
    return root


def findings(root: Path, *names: str) -> list[Finding]:
    files = [root / n for n in names] or validate.project_files(Project(root))
    return validate_paths(files, root)


def codes(found: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.code, Path(f.file).name, f.key) for f in found}


# ----- 4: YAML that is not a mapping --------------------------------------------------------
@pytest.mark.parametrize("text", ["- a\n", "hello\n", "42\n"])
def test_model_config_not_a_mapping_is_a_finding(project: Path, text: str) -> None:
    (project / "model-config.yml").write_text(text)
    done = servekit("validate", cwd=project)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model-config.yml:1: error: (file)=" in done.stdout
    assert "not a mapping" in done.stdout and "[wrong-type]" in done.stdout


@pytest.mark.parametrize("text", ["- a\n", "hello\n", "42\n", "handler: 5\n"])
def test_show_config_names_a_defaults_file_that_is_not_a_mapping(project: Path, text: str) -> None:
    (project / "model-config.yml").write_text(text)
    done = servekit("show-config", "tiny", cwd=project)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"servekit show-config: {project / 'model-config.yml'}: ")


def test_read_yaml_gives_a_mapping_or_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "defaults.yml"
    path.write_text("")
    assert read_yaml(path) == {}
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the file holds a YAML list (['a'])")):
        read_yaml(path)


def test_a_handler_section_that_is_not_a_mapping_is_a_config_error(project: Path) -> None:
    spec = load_spec(project / "config" / "tiny.yml", project)
    with pytest.raises(ConfigError, match="key 'handler' must be a mapping"):
        effective_config(spec, {"handler": 5})
    with pytest.raises(ConfigError, match=r"^defaults\.yml: key 'handler' must be a mapping"):
        config_sources(spec, {"handler": [1]}, Path("defaults.yml"))


# ----- 8/14: the project directory ----------------------------------------------------------
def test_a_file_as_project_says_so(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotAProject, match="afile is a file, not a directory"):
        Project(tmp_path / "afile").check()
    done = servekit("validate", "--project", "afile", cwd=tmp_path)
    assert done.returncode == 2
    assert "is a file, not a directory" in done.stderr and "does not exist" not in done.stderr


def test_an_unreadable_project_directory_says_so(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.listdir

    def listdir(path: str | Path) -> list[str]:
        if Path(path) == project:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(NotAProject, match="cannot be read: Permission denied"):
        Project(project).check()
    assert validate.main(["--project", str(project)]) == 2


def test_an_unreadable_config_properties_says_so(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Path.open

    def opened(self: Path, *args: object, **kwargs: object) -> object:
        if self == project / "config.properties":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", opened)
    assert show.main(["tiny", "--project", str(project)]) == 2
    assert "config.properties cannot be read: Permission denied" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_a_chmod_000_project_is_exit_2(project: Path) -> None:
    project.chmod(0)
    try:
        done = servekit("validate", "--project", project, cwd=project.parent)
    finally:
        project.chmod(stat.S_IRWXU)
    assert done.returncode == 2 and "cannot be read" in done.stderr, done.stderr


def test_a_fifo_config_properties_is_not_opened(project: Path) -> None:
    (project / "config.properties").unlink()
    os.mkfifo(project / "config.properties")
    with pytest.raises(NotAProject, match="is not a regular file"):
        Project(project).check()


# ----- 10: specs validate let through -------------------------------------------------------
def test_an_empty_spec_in_config_is_an_error(project: Path) -> None:
    (project / "config" / "empty.yml").write_text("")
    assert ("missing-key", "empty.yml", "(file)") in codes(findings(project))
    with pytest.raises(ConfigError, match=r"empty\.yml: empty; a model spec needs"):
        load_spec(project / "config" / "empty.yml", project)


def test_a_name_torchserve_refuses_is_an_error(project: Path) -> None:
    path = project / "config" / "bad name.yml"
    path.write_text(SPEC.replace("name: tiny", "name: bad name"))
    found = [f for f in findings(project) if f.code == "bad-value"]
    assert [f.key for f in found] == ["name"] and "special characters" in found[0].problem
    with pytest.raises(ConfigError, match="TorchServe refuses it"):
        load_spec(path, project)


def test_handler_in_model_config_says_use_handler_options(project: Path) -> None:
    (project / "config" / "tiny.yml").write_text(
        SPEC + "model_config:\n  batchSize: 1\n  handler:\n    warmup: maybe\n"
    )
    (found,) = [f for f in findings(project) if f.code == "misplaced-key"]
    assert (found.key, found.line) == ("model_config.handler", 6)
    assert "handler_options" in found.fix
    done = servekit("show-config", "tiny", cwd=project)
    assert done.returncode == 2 and "handler_options" in done.stderr


def test_load_models_without_a_spec_is_a_warning_with_the_specs(project: Path) -> None:
    (project / "config.properties").write_text(
        "load_models=tiny.mar,nosuch.mar, other=elsewhere.mar,all,https://x.example/y.mar\n"
    )
    found = [f for f in findings(project) if f.code == "no-spec"]
    assert [(f.severity, f.value, f.line) for f in found] == [
        ("warning", "nosuch.mar", 1),
        ("warning", "elsewhere.mar", 1),
    ]
    assert not [f for f in findings(project, "config.properties") if f.code == "no-spec"]


def test_a_config_dir_yml_is_a_spec_even_without_spec_keys(project: Path) -> None:
    (project / "config" / "odd.yml").write_text("batchSize: 2\n")
    assert ("missing-key", "odd.yml", "name") in codes(findings(project))


# ----- 1: handler imports an archive cannot satisfy -----------------------------------------
def bad_imports(project: Path, source: str) -> list[Finding]:
    (project / "handlers" / "tiny.py").write_text(source + "\n\n" + HANDLER)
    return [f for f in findings(project) if f.code == "bad-import"]


def test_a_relative_import_in_the_handler_names_line_and_fix(project: Path) -> None:
    (project / "handlers" / "helper.py").write_text("X = 1\n")
    (found,) = bad_imports(project, '"""doc"""\nfrom .helper import X as Y')
    assert found.severity == "error" and (found.key, found.line) == ("handler", 3)
    assert found.problem.startswith("handlers/tiny.py:2: from .helper import X as Y: a relative")
    assert found.fix == "write from handlers.helper import X as Y"


def test_servekit_outside_the_runtime_is_an_error(project: Path) -> None:
    found = bad_imports(
        project,
        "import servekit.runtime.base\nfrom servekit.runtime.errors import ModelLoadError\n"
        "from servekit.errors import ToolkitError\nimport servekit.bench.stats",
    )
    assert [f.problem.split(": ")[0] for f in found] == ["handlers/tiny.py:3", "handlers/tiny.py:4"]
    assert "only servekit.runtime is shipped" in found[0].problem


def test_planned_fallbacks_and_type_checking_imports_are_not_reported(project: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from servekit.errors import E\n"
        "try:\n    from servekit.bench import stats\nexcept ImportError:\n    stats = None"
    )
    assert bad_imports(project, source) == []


def test_handlers_modules_are_followed_one_level(project: Path) -> None:
    common = project / "handlers" / "common"
    common.mkdir()
    (common / "util.py").write_text("from servekit.errors import ToolkitError\n")
    (common / "deep.py").write_text("from servekit.errors import ToolkitError\n")
    (common / "__init__.py").write_text("from handlers.common import deep\n")
    found = bad_imports(
        project, "from handlers.common.util import double\nimport handlers.common.nope"
    )
    assert [f.problem.split(": ")[0] for f in found] == [
        "handlers/tiny.py:2",
        "handlers/common/util.py:1",
    ]
    assert "no module handlers.common.nope" in found[0].problem


# ----- 14: show-config names, exit codes; config-docs --check -------------------------------
@pytest.mark.parametrize("name", ["../config/tiny", "../model-config", "", "a/b", ".."])
def test_show_config_refuses_path_like_names(project: Path, name: str) -> None:
    done = servekit("show-config", name, cwd=project)
    assert done.returncode == 2 and "is not a model name" in done.stderr, done.stderr


def test_show_config_exits_2_on_a_spec_that_cannot_be_loaded(project: Path) -> None:
    (project / "config" / "tiny.yml").write_text(SPEC + "bogus: 1\n")
    done = servekit("show-config", "tiny", cwd=project)
    assert done.returncode == 2 and "unknown key 'bogus'" in done.stderr


def test_config_docs_check_says_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_docs.main(["--check", "--out", str(tmp_path / "keys.md")]) == 1
    assert "keys.md is missing: run servekit config-docs --write" in capsys.readouterr().err


def test_hostile_imports_get_findings_not_exceptions(project: Path) -> None:
    long_name = ".".join(["a" * 200] * 40)  # a path too long for the file system
    source = f"from handlers.{long_name} import x\nimport servekit.{long_name}\n" + (
        "from .m import y\n" * 2000
    )
    found = bad_imports(project, source)
    assert len(found) == 2002
    assert all(len(f.text()) < 1000 for f in found)


# ----- second review: false positives of the import checks ----------------------------------
def import_findings(project: Path, source: str) -> list[tuple[str, str, str]]:
    """(code, severity, where) of each import finding, ``where`` being file:line."""
    (project / "handlers" / "tiny.py").write_text(source + "\n\n" + HANDLER)
    return [
        (f.code, f.severity, f.problem.split(": ")[0])
        for f in findings(project)
        if f.code in ("bad-import", "conditional-import")
    ]


def test_servekit_itself_and_its_runtime_name_are_shipped(project: Path) -> None:
    source = (
        "import servekit\nfrom servekit import runtime\nfrom servekit import __version__\n"
        "from servekit import runtime as rt, __version__ as v\nimport servekit.runtime as r"
    )
    assert import_findings(project, source) == []


def test_from_servekit_import_a_module_outside_the_runtime_is_an_error(project: Path) -> None:
    (found,) = bad_imports(project, "from servekit import __version__, health")
    assert "servekit.health is not in the archive" in found.problem


@pytest.mark.parametrize(
    "source",
    [
        "try:\n    from handlers.fast_path import accel\nexcept BaseException:\n    accel = None",
        "try:\n    import servekit.bench\nexcept (OSError, BaseException):\n    pass",
        "from typing import TYPE_CHECKING as TC\nif TC:\n    from servekit.health.cli import Y",
        "import typing\nif typing.TYPE_CHECKING:\n    from servekit.config.schema import X",
        "import typing_extensions as te\nif te.TYPE_CHECKING:\n    import handlers.nope",
    ],
)
def test_guarded_imports_are_not_reported(project: Path, source: str) -> None:
    assert import_findings(project, source) == []


def test_imports_under_if_or_in_a_function_are_warnings(project: Path) -> None:
    source = (
        "import sys\nif sys.version_info >= (3, 12):\n    from handlers.py312 import z\n"
        "else:\n    from servekit.health import z\n"
        "def f():\n    import servekit.health.cli\n"
        "class C:\n    def m(self):\n        from handlers.later import q\n"
        "import servekit.bench"
    )
    assert import_findings(project, source) == [
        ("bad-import", "error", "handlers/tiny.py:11"),
        ("conditional-import", "warning", "handlers/tiny.py:3"),
        ("conditional-import", "warning", "handlers/tiny.py:5"),
        ("conditional-import", "warning", "handlers/tiny.py:7"),
        ("conditional-import", "warning", "handlers/tiny.py:10"),
    ]
    assert validate.main(["--project", str(project)]) == 1  # the unguarded one


def test_a_warning_alone_does_not_fail_the_check(project: Path) -> None:
    found = import_findings(project, "def f():\n    import servekit.health.cli")
    assert found == [("conditional-import", "warning", "handlers/tiny.py:2")]
    assert validate.main(["--project", str(project)]) == 0


@pytest.mark.parametrize(
    "name",
    ["fastops.cpython-311-x86_64-linux-gnu.so", "fastops.abi3.so", "fastops.so", "fastops.pyd"],
)
def test_a_compiled_extension_module_in_handlers_is_found(project: Path, name: str) -> None:
    (project / "handlers" / name).write_bytes(b"\x7fELF\x02\x01\x01\x00")
    source = "from handlers.fastops import f\nimport handlers.fastops\nfrom handlers import fastops"
    assert import_findings(project, source) == []


def test_relative_import_of_the_project_root_says_it_is_not_handlers(project: Path) -> None:
    (found, here, star) = bad_imports(
        project, "from .. import x\nfrom . import y\nfrom ..lib import z as w"
    )
    assert found.fix.startswith("write import x (.. is the project root, outside handlers/")
    assert here.fix == "write from handlers import y"
    assert star.fix.startswith("write from lib import z as w (.. is the project root")


def test_relative_import_above_the_project_says_so(project: Path) -> None:
    (found,) = bad_imports(project, "from ... import x")
    assert found.fix.startswith("... is above the project: move what it imports into handlers/")


def test_the_packages_init_of_an_imported_module_is_followed(project: Path) -> None:
    pkg = project / "handlers" / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from servekit.bench import stats\n")
    (pkg / "mod.py").write_text("X = 1\n")
    found = bad_imports(project, "import handlers.pkg.mod")
    assert [f.problem.split(": ")[0] for f in found] == ["handlers/pkg/__init__.py:1"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* is Python 3.11")
def test_except_star_guards_and_match_cases_are_conditional(project: Path) -> None:
    source = (
        "try:\n    import servekit.bench\nexcept* ImportError:\n    pass\n"
        "match 1:\n    case 1:\n        import servekit.health"
    )
    assert import_findings(project, source) == [
        ("conditional-import", "warning", "handlers/tiny.py:7")
    ]

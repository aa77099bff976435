"""servekit validate: exit codes, text and JSON output, the project's own configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
VALIDATE = [sys.executable, "-m", "servekit.cli", "validate"]
PROJECT_CONFIGS = [
    ROOT / "config.properties",
    ROOT / "model-config.yml",
    *sorted((ROOT / "config").glob("*.yml")),
]


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VALIDATE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_project_configs_validate_clean() -> None:
    done = run(*PROJECT_CONFIGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{len(PROJECT_CONFIGS)} file(s): 0 error(s), 0 warning(s)"]
    assert done.stderr == ""


def test_no_files_validates_the_project_here_or_named(tmp_path: Path) -> None:
    clean = [f"{len(PROJECT_CONFIGS)} file(s): 0 error(s), 0 warning(s)"]
    assert run().stdout.splitlines() == clean
    done = run("--project", ROOT, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.splitlines() == clean, done.stderr


def test_no_files_outside_a_project_is_a_clear_usage_error(tmp_path: Path) -> None:
    arguments: list[list[str | Path]] = [[], ["--project", tmp_path / "nope"]]
    for args in arguments:
        done = run(*args, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith("servekit validate: ") and (
            "--project DIR" in line or "nope" in line
        )


def test_a_project_default_finds_a_bad_spec(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("job_queue_size=4\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "m.yml").write_text('name: m\nversion: "1.0"\nhandler: h.py\n')
    done = run("--json", "--project", tmp_path)  # from another directory: paths are absolute
    assert done.returncode == 1, done.stderr
    codes = {(f["code"], f["file"]) for f in json.loads(done.stdout)["findings"]}
    assert ("missing-file", str(tmp_path / "config" / "m.yml")) in codes


def test_error_exits_1_and_names_file_line_key_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "model-config.yml"
    config.write_text("batchSize: 4\nmaxBatchdelay: 50\n")
    done = run(config)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        f"{config}:2: error: maxBatchdelay=50: unknown key: TorchServe ignores it silently; "
        "expected a key TorchServe 0.12 reads; fix: did you mean 'maxBatchDelay'? [unknown-key]"
    )


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    config.write_text(
        "allowed_urls=file://.*/model_store/[a-z]+[.]mar\ninstall_py_dep_per_model=true\n"
    )
    done = run(config)
    assert done.returncode == 0, done.stdout
    assert "warning: install_py_dep_per_model=true" in done.stdout


def test_json_lists_every_field(tmp_path: Path) -> None:
    config = tmp_path / "model-config.yml"
    config.write_text('batchSize: "4"\n')
    done = run("--json", config)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["findings"] == [
        {
            "severity": "error",
            "code": "wrong-type",
            "file": str(config),
            "line": 1,
            "key": "batchSize",
            "value": "'4'",
            "expected": "an integer >= 1",
            "fix": "write a bare integer, e.g. batchSize: 4",
            "problem": "str, not an integer: TorchServe logs a WARN and keeps the default (1)",
        }
    ]


def test_json_clean_is_ok() -> None:
    done = run("--json", ROOT / "config.properties")
    assert json.loads(done.stdout) == {"ok": True, "findings": []}


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-flag", "config.properties"],
        ["README.md"],
        ["does-not-exist.yml"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_queue_size_of_properties_applies_to_model_configs(tmp_path: Path) -> None:
    props = tmp_path / "config.properties"
    props.write_text("allowed_urls=file://.*/model_store/[a-z]+[.]mar\njob_queue_size=4\n")
    config = tmp_path / "model-config.yml"
    config.write_text("batchSize: 8\n")
    done = run("--json", props, config)
    (finding,) = json.loads(done.stdout)["findings"]
    assert (finding["code"], finding["key"], finding["file"]) == (
        "queue-below-batch",
        "batchSize",
        str(config),
    )


def test_the_projects_log_config_is_found_from_the_configs_directory() -> None:
    from servekit.config.check_properties import check_properties

    findings, values = check_properties(ROOT / "config.properties", "config.properties")
    assert "-Dlog4j.configurationFile=config/log4j2.xml" in values["vmargs"]
    assert not [f for f in findings if f.key == "vmargs"]


NEVER_IMPORTED = ROOT / "tests" / "corpus" / "specs" / "spec_handler_never_imported.yml"


def test_a_specs_handler_is_read_never_run(tmp_path: Path) -> None:
    # The handler writes a marker into the working directory and exits when imported.
    done = subprocess.run(
        [*VALIDATE, "--json", "--project", str(ROOT), str(NEVER_IMPORTED)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert not (tmp_path / "IMPORTED-BY-THE-VALIDATOR").exists()
    assert done.returncode == 1, done.stderr
    (finding,) = json.loads(done.stdout)["findings"]
    assert (finding["code"], finding["key"]) == ("undeclared-option", "handler.top_kk")
    assert finding["fix"] == "did you mean 'top_k'?"


def test_import_handlers_is_the_explicit_opt_in(tmp_path: Path) -> None:
    done = subprocess.run(
        [*VALIDATE, "--import-handlers", "--json", "--project", str(ROOT), str(NEVER_IMPORTED)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert (tmp_path / "IMPORTED-BY-THE-VALIDATOR").exists()  # it did run the handler
    (finding,) = json.loads(done.stdout)["findings"]
    assert finding["code"] == "bad-handler"
    assert "cannot import: SystemExit" in finding["problem"]


def test_import_handlers_keeps_the_range_checks() -> None:
    spec = ROOT / "tests" / "corpus" / "specs" / "spec_option_range.yml"
    for flags in ([], ["--import-handlers"]):
        (finding,) = json.loads(run(*flags, "--json", spec).stdout)["findings"]
        assert (finding["code"], finding["key"]) == ("bad-option", "handler.warmup_batch_size")


def test_only_import_handlers_runs_a_projects_own_range_checks() -> None:
    spec = ROOT / "tests" / "data" / "spec_project_option_range.yml"
    assert json.loads(run("--json", spec).stdout)["findings"] == []
    (finding,) = json.loads(run("--import-handlers", "--json", spec).stdout)["findings"]
    assert (finding["code"], finding["key"]) == ("bad-option", "handler.top_k")


HOSTILE = {
    "alias-bomb.yml": "a: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(
        f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ),
    "recursive.yml": "handler: &h {warmup: *h}\n",
    "date.yml": "batchSize: 2024-02-30\n",
    "digits.yml": "batchSize: " + "9" * 5000 + "\n",
    "surrogate.yml": '"\\ud800": 1\n',
    "deep.yml": "handler: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "models.properties": "models=" + "[" * 100_000 + "]" * 100_000 + "\n",
    "digits.properties": "job_queue_size=" + "9" * 5000 + "\n",
    "surrogate.properties": "\\ud800=1\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("as_json", [False, True])
def test_hostile_files_get_findings_within_bounded_memory(
    tmp_path: Path, name: str, as_json: bool
) -> None:
    path = tmp_path / name
    path.write_text(HOSTILE[name], encoding="utf-8", errors="surrogatepass")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    run_cli = "import runpy; runpy.run_module('servekit.cli', run_name='__main__')"
    flags = ["--json"] if as_json else []
    done = subprocess.run(
        [sys.executable, "-c", limit + run_cli, "validate", *flags, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    if as_json:
        findings = json.loads(done.stdout)["findings"]
        assert findings and all(f["file"] == str(path) for f in findings)
    else:
        assert f"{path}" in done.stdout

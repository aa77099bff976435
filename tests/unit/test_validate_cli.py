"""scripts/validate_config.py: exit codes, text and JSON output, the project's own configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "scripts" / "validate_config.py"
PROJECT_CONFIGS = [
    ROOT / "config.properties",
    ROOT / "model-config.yml",
    *sorted((ROOT / "config").glob("*.yml")),
]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_project_configs_validate_clean() -> None:
    done = run(*PROJECT_CONFIGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{len(PROJECT_CONFIGS)} file(s): 0 error(s), 0 warning(s)"]
    assert done.stderr == ""


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
        [],
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
    from servekit.check_properties import check_properties

    findings, values = check_properties(ROOT / "config.properties", "config.properties")
    assert "-Dlog4j.configurationFile=config/log4j2.xml" in values["vmargs"]
    assert not [f for f in findings if f.key == "vmargs"]

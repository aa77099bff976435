"""The validator, show-config and their readers on inputs a hostile review found: a finding
or a clean usage error, never a traceback, within bounded time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from servekit.config.findings import jsonable, show
from servekit.config.validate import validate_paths
from servekit.config.yamlpos import YamlTooLarge, int_bits, load_yaml

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = [sys.executable, "-m", "servekit.cli"]


def run(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


# ----- 1. integers in every YAML form are sized before they are converted --------------------
@pytest.mark.parametrize(
    "value",
    [
        "0x" + "f" * 3600,
        "-0x" + "f" * 3600,
        "0b" + "1" * 15000,
        "0" + "7" * 5000,
        ":".join(["1"] * 3000),
        "1" + "_0" * 4400,
        "!!int 0x" + "f" * 3600,
    ],
    ids=["hex", "negative-hex", "binary", "octal", "base60", "underscores", "tagged"],
)
def test_a_huge_integer_in_any_yaml_form_is_refused(value: str) -> None:
    with pytest.raises(yaml.YAMLError, match="an integer of about"):
        load_yaml(f"batchSize: {value}\n")


def test_integers_up_to_the_cap_are_read_in_every_form() -> None:
    data = load_yaml("a: 0x" + "f" * 3000 + "\nb: 1:30:00\nc: 0b101\nd: 017\ne: " + "9" * 4000)
    assert data.data["b"] == 5400 and data.data["c"] == 5 and data.data["d"] == 15
    assert data.data["a"].bit_length() == 12000
    assert int_bits("0x" + "0" * 9000 + "1") == 4  # leading zeros add nothing


@pytest.mark.parametrize("as_json", [False, True])
def test_the_cli_reports_a_hex_integer(tmp_path: Path, as_json: bool) -> None:
    config = tmp_path / "model-config.yml"
    config.write_text("batchSize: 0x" + "f" * 3600 + "\n")
    done = run("validate", *(["--json"] if as_json else []), str(config))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    text = json.loads(done.stdout)["findings"][0]["problem"] if as_json else done.stdout
    assert "an integer of about 4335 digits" in text


def test_show_and_jsonable_never_print_a_huge_int() -> None:
    huge = 2**20000  # str() raises: over 4,300 digits
    assert show(huge) == "an integer of about 6020 digits"
    assert "about 6020 digits" in show([huge]) and "about 6020 digits" in show({"a": huge})
    assert jsonable({"a": [huge]}) == {"a": ["an integer of about 6020 digits"]}


# ----- 2, 3. allowed_urls: bounded compile, one deadline ------------------------------------
def test_allowed_urls_checks_take_bounded_time(tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    slow = ",".join([r"https?://(?:.*?){7}[0-9]"] * 100)
    config.write_text(f"enable_model_api=false\nallowed_urls={slow}\n")
    started = time.process_time()  # this process's CPU: the same on a busy machine
    findings = validate_paths([config], ROOT)
    assert time.process_time() - started < 6
    assert [(f.code, f.key) for f in findings] == [("bad-value", "allowed_urls")]


# ----- 4. handler annotations too deep to read ----------------------------------------------
HANDLER = (
    "from servekit.runtime.base import BaseHandler\nfrom deep_options import DeepOptions\n\n\n"
    "class Deep(BaseHandler):\n    options_class = DeepOptions\n"
)


@pytest.mark.parametrize(
    "annotation",
    ["|".join(["int"] * 1200), repr("-" * 3000 + "int")],
    ids=["union-1200", "string-3000-minus"],
)
def test_a_deep_annotation_is_unchecked_not_a_crash(tmp_path: Path, annotation: str) -> None:
    (tmp_path / "deep.py").write_text(HANDLER)
    (tmp_path / "deep_options.py").write_text(
        "import dataclasses\nfrom servekit.runtime.options import HandlerOptions\n\n\n"
        "@dataclasses.dataclass(frozen=True)\nclass DeepOptions(HandlerOptions):\n"
        f"    x: {annotation} = 1\n"
    )
    spec = tmp_path / "deep.yml"
    spec.write_text('name: deep\nversion: "1.0"\nhandler: deep.py\nhandler_options:\n  x: 2\n')
    findings = validate_paths([spec], tmp_path)
    assert [(f.code, f.key) for f in findings] == [("options-unchecked", "handler")]


# ----- 5. keys that are not strings ---------------------------------------------------------
def test_show_config_prints_keys_that_are_not_strings(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("")  # a small project of its own
    (tmp_path / "config").mkdir()
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    (tmp_path / "model-config.yml").write_text("minWorkers: 1\nmaxWorkers: 1\n3: three\n")
    (tmp_path / "config" / "m.yml").write_text(
        'name: m\nversion: "1.0"\nhandler: h.py\nmodel_config:\n  1: 1\n  2024-01-01: 1\n'
        '  null: .nan\n  "k\\u001b[31m": 1\n'
    )
    done = run("show-config", "m", "--project", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    assert rows["1"] == "1" and rows["2024-01-01"] == "1" and rows["null"] == '"NaN"'
    assert "\x1b" not in done.stdout and "k\\x1b[31m" in done.stdout
    assert "1: a YAML int key, not a string" in done.stdout
    assert "2024-01-01: a YAML timestamp key, not a string" in done.stdout


def test_keys_that_are_not_strings_in_a_spec(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    spec = tmp_path / "m.yml"
    spec.write_text(
        'name: m\nversion: "1.0"\nhandler: h.py\n1: x\nmodel_config: {1: 1, true: 2}\n'
        "handler_options: {2024-01-01: 1}\n"
    )
    findings = validate_paths([spec], tmp_path)
    assert {(f.code, f.key) for f in findings} >= {
        ("wrong-type", "1"),
        ("wrong-type", "model_config.1"),
        ("wrong-type", "model_config.true"),
        ("wrong-type", "handler_options.2024-01-01"),
    }
    assert all(f.code == "wrong-type" for f in findings), [f.text() for f in findings]


# ----- 9. paths that are not files ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["long", "fifo", "dir", "device", "missing"])
def test_a_path_that_is_not_a_file_is_a_usage_error_naming_what_it_is(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "x.yml"
    if kind == "long":
        path = tmp_path / ("a" * 300 + ".yml")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "device":
        path = tmp_path / "x.properties"
        path.symlink_to("/dev/zero")
    done = run("validate", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    expected = {
        "long": "a file name too long",
        "fifo": "a named pipe (FIFO), not a regular file",
        "dir": "a directory, not a regular file",
        "device": "a character device, not a regular file",
        "missing": "no such file",
    }[kind]
    assert expected in done.stderr


# ----- 13. the node cap is checked while composing ------------------------------------------
def test_a_huge_flat_mapping_is_too_many_values_not_an_alias_bomb() -> None:
    text = "{" + ",".join(f"k{i}: 0" for i in range(90_000)) + "}\n"
    started = time.process_time()  # this process's CPU: the same on a busy machine
    with pytest.raises(YamlTooLarge, match="more than 100000 values") as caught:
        load_yaml(text)
    assert "alias" not in str(caught.value)
    assert time.process_time() - started < 10


def test_a_huge_flow_sequence_stops_at_the_cap() -> None:
    text = "a: [" + "0," * 500_000 + "0]\n"  # 1 MB
    started = time.process_time()  # this process's CPU: the same on a busy machine
    with pytest.raises(YamlTooLarge):
        load_yaml(text)
    assert time.process_time() - started < 8  # 11 s when every node was composed first

"""The bench subcommands' edges: help, usage errors, the project they work on, the machine
record. No server is started here (tests/e2e/test_bench_script.py and test_tune.py run them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servekit import cli
from servekit.bench import command
from servekit.bench.machine import PACKAGES, cpu_model, machine

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ["bench", "compare", "tune", "bench-bridge", "bench-ops", "profile", "limit"]


@pytest.fixture
def bare_project(tmp_path: Path) -> Path:
    """A project with a config.properties and nothing built."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "config.properties").write_text("inference_address=http://127.0.0.1:8080\n")
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", BENCH)
def test_help_names_the_command_and_its_project_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([name, "--help"]) == cli.OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: servekit {name}") and "--project DIR" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--model", "iris", "--batch-size", "0"], "batch_size is 0"),
        (["bench", "--model", "iris", "-c", "0"], "concurrency is 0"),
        (["bench", "--url", "http://127.0.0.1:9/x"], "give --payload FILE"),
        (["bench"], "give --model NAME"),
        (["tune", "--model", "iris", "--delays", "20,5"], "give distinct values, ascending"),
        (["tune", "--model", "iris", "--batch-sizes", "8,x"], "expected integers"),
        (["compare", "--only", "nginx"], "unknown system(s) ['nginx']"),
        (["compare", "--duration", "2", "--warmup", "3"], "longer than --warmup"),
        (["bench-bridge", "-n", "0"], "must be >= 1"),
        (["profile", "--batch-size", "0"], "batch_size is 0"),
        (["limit", "--processes", "0"], "--processes is 0"),
    ],
)
def test_bad_arguments_are_usage_errors_before_anything_starts(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = run([*args, "--project", str(tmp_path)], capsys)
    assert code == cli.USAGE
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--model", "iris"],
        ["tune", "--model", "iris"],
        ["compare"],
        ["bench-bridge"],
        ["bench-ops"],
        ["profile"],
        ["limit"],
    ],
)
def test_a_directory_that_is_no_project_is_a_clear_usage_error(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run([*args, "--project", str(tmp_path)], capsys)
    assert code == cli.USAGE
    assert err.strip() == (
        f"servekit {args[0]}: {tmp_path} is not a servekit project (no config.properties): "
        "run servekit in a project directory or pass --project DIR"
    )


@pytest.mark.parametrize(
    ("args", "archive"),
    [
        (["bench", "--model", "iris"], "iris"),
        (["tune", "--model", "iris"], "iris"),
        (["compare"], "minilm"),
        (["limit"], "minilm"),
    ],
)
def test_the_archive_is_looked_for_in_the_project_given(
    args: list[str], archive: str, bare_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run([*args, "--project", str(bare_project)], capsys)
    assert code == cli.USAGE
    missing = bare_project / "model_store" / f"{archive}.mar"
    assert f"{missing} does not exist; build it with `servekit archive {archive}`" in err


def test_project_from_another_directory_through_the_command(
    bare_project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "servekit.cli",
            "tune",
            "--model",
            "iris",
            "--project",
            str(bare_project),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == cli.USAGE, done.stderr
    assert str(bare_project / "model_store" / "iris.mar") in done.stderr
    assert "Traceback" not in done.stderr


def test_the_current_directory_is_the_default_project(
    bare_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(bare_project)
    code, err = run(["tune", "--model", "iris"], capsys)
    assert code == cli.USAGE
    assert str(bare_project / "model_store" / "iris.mar") in err


def test_the_command_line_is_recorded_as_a_servekit_command() -> None:
    assert (
        command.line("bench", ["--model", "iris", "-c", "2"]) == "servekit bench --model iris -c 2"
    )
    assert command.line("tune", ["--spec", "a b.yml"]) == "servekit tune --spec 'a b.yml'"


def test_the_machine_record() -> None:
    record = machine()
    assert isinstance(record["cpus"], int) and record["cpus"] >= 1
    assert isinstance(record["cpu_model"], str) and record["cpu_model"]
    assert record["memory_gb"] is None or isinstance(record["memory_gb"], float)
    load = record["load_average_at_start"]
    assert isinstance(load, list) and len(load) == 3
    versions = record["versions"]
    assert isinstance(versions, dict) and set(versions) == set(PACKAGES)
    assert versions["torchserve"] and versions["torch"]  # installed here


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n")
    assert cpu_model(info) == "Example CPU @ 2.0GHz"
    assert cpu_model(tmp_path / "missing")  # whatever platform says, never empty or an error


def test_profile_without_py_spy_says_which_extra_installs_it(
    bare_project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    code, err = run(["profile", "--project", str(bare_project)], capsys)
    assert code == cli.USAGE
    assert err.strip() == (
        "servekit profile: py-spy is not installed: pip install 'torchserve-kit[bench]' "
        "(or pip install py-spy)"
    )

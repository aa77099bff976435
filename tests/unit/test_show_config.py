"""servekit show-config: each effective value of a model and the file it comes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servekit.config.specs import config_sources, effective_config, load_spec, read_yaml

ROOT = Path(__file__).resolve().parent.parent.parent


def show(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servekit.cli", "show-config", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )


def test_iris_values_and_origins() -> None:
    done = show("iris")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in done.stdout.splitlines()}
    tuned = read_yaml(ROOT / "config" / "iris.yml")["model_config"]  # what the tuner wrote
    for key in ("batchSize", "maxBatchDelay", "minWorkers"):
        assert rows[key] == [str(tuned[key]), "config/iris.yml (model_config)"], key
    assert rows["handler.warmup"] == ["true", "model-config.yml"]
    assert rows["handler.warmup_batch_size"] == ["1", "handlers/iris.py (handler default)"]


def test_digits_handler_options_come_from_the_spec() -> None:
    rows = {
        line.split()[0]: line.split(maxsplit=2)[1:] for line in show("digits").stdout.splitlines()
    }
    assert rows["handler.top_k"] == ["3", "config/digits.yml (handler_options)"]
    assert rows["handler.invert"] == ['"auto"', "config/digits.yml (handler_options)"]
    assert rows["handler.max_pixels"][1] == "handlers/digits.py (handler default)"


def test_unknown_model_is_a_usage_error() -> None:
    done = show("nope")
    assert done.returncode == 2
    assert "no spec config/nope.yml (known: " in done.stderr


def test_from_another_directory_with_project(tmp_path: Path) -> None:
    here, there = show("iris"), show("iris", "--project", ROOT, cwd=tmp_path)
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout  # origins are relative to the project, wherever run


def test_outside_a_project_is_a_clear_usage_error(tmp_path: Path) -> None:
    done = show("iris", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"servekit show-config: {tmp_path} is not a servekit project (no config.properties): "
        "run servekit in a project directory or pass --project DIR"
    ]


def test_sources_cover_exactly_the_effective_config() -> None:
    defaults = read_yaml(ROOT / "model-config.yml")
    for spec_path in sorted((ROOT / "config").glob("*.yml")):
        spec = load_spec(spec_path, ROOT)
        config = effective_config(spec, defaults)
        sources = config_sources(spec, defaults, ROOT / "model-config.yml")
        flat = {k: v for k, v in config.items() if k != "handler"}
        flat |= {f"handler.{k}": v for k, v in (config.get("handler") or {}).items()}
        assert {k: value for k, (value, _) in sources.items()} == flat

"""Same inputs, same bytes: archives built at different times, in different places, match."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from servekit.config.specs import load_spec, read_yaml
from servekit.serve.archive import build, file_sha256
from servekit.serve.marinfo import check_against_spec, read_mar
from servekit.serve.reproducible import CREATED_ON, MANIFEST, ZIP_EPOCH
from servekit.serve.settings import archived_setting

ROOT = Path(__file__).resolve().parent.parent.parent
INSPECT = [sys.executable, "-m", "servekit.cli", "inspect"]
SOURCES = [
    "handlers",
    "models/iris.pt",
    "models/iris_labels.json",
    "config/iris.yml",
    "model-config.yml",
]


def checkout(where: Path, mtime: int) -> Path:
    """A copy of the iris model's inputs whose files all carry ``mtime``."""
    for name in SOURCES:
        source, target = ROOT / name, where / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    for path in where.rglob("*"):
        os.utime(path, (mtime, mtime))
    return where


def build_iris(root: Path, store: Path) -> Path:
    spec = load_spec(root / "config" / "iris.yml", root)
    return build(spec, read_yaml(root / "model-config.yml"), root, store, force=True).path


def test_two_builds_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Different checkouts, file mtimes, temp dirs and clocks (the archiver's createdOn is local
    # time, so a different TZ is a different time) ...
    monkeypatch.setenv("TZ", "UTC")
    first = build_iris(checkout(tmp_path / "a", 1_000_000_000), tmp_path / "store-a")
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    second = build_iris(checkout(tmp_path / "b", 1_700_000_000), tmp_path / "store-b")
    # ... and the same bytes.
    assert first.read_bytes() == second.read_bytes()
    recorded = (first.parent / "iris.mar.sha256").read_text()
    assert recorded == f"{file_sha256(first)}  iris.mar\n"
    assert recorded == (second.parent / "iris.mar.sha256").read_text()


def test_archive_is_canonical(tmp_path: Path) -> None:
    mar = build_iris(checkout(tmp_path / "a", 1_234_567_890), tmp_path / "store")
    with zipfile.ZipFile(mar) as archive:
        infos = archive.infolist()
        manifest = json.loads(archive.read(MANIFEST))
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {ZIP_EPOCH}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    assert manifest["createdOn"] == CREATED_ON
    assert manifest["model"]["modelName"] == "iris"


def test_inspect_matches_spec_and_catches_a_changed_input(tmp_path: Path) -> None:
    root = checkout(tmp_path / "a", 1_234_567_890)
    mar = build_iris(root, tmp_path / "store")
    spec = load_spec(root / "config" / "iris.yml", root)
    defaults = read_yaml(root / "model-config.yml")
    assert check_against_spec(read_mar(mar), spec, defaults, root) == []
    (root / "models" / "iris_labels.json").write_text('["a", "b", "c"]')
    changed = dict(defaults, responseTimeout=defaults["responseTimeout"] + 1)  # not in the spec
    problems = check_against_spec(read_mar(mar), spec, changed, root)
    assert "iris_labels.json differs from models/iris_labels.json" in problems
    assert any(p.startswith("model config differs") for p in problems)


def test_inspect_cli_shows_manifest_and_files(model_store: Path) -> None:
    mar = model_store / "iris.mar"
    done = subprocess.run(
        [*INSPECT, "--json", str(mar)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["matches_spec"] is True and report["problems"] == []
    assert report["manifest"]["model"]["handler"] == "iris.py"
    assert report["model_config"]["batchSize"] == archived_setting(ROOT, "iris").batch_size
    assert {"iris.pt", "iris_labels.json", "servekit/runtime/base.py"} <= set(report["files"])
    assert report["sha256"] == (model_store / "iris.mar.sha256").read_text().split()[0]


def test_inspect_cli_usage_and_broken_file(tmp_path: Path) -> None:
    missing = subprocess.run([*INSPECT, str(tmp_path / "nope.mar")], check=False)
    assert missing.returncode == 2
    broken = tmp_path / "broken.mar"
    broken.write_bytes(b"not a zip")
    done = subprocess.run([*INSPECT, str(broken)], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "not a readable .mar (zip) file" in done.stderr

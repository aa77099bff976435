"""``servekit.runtime.stats``: worker counters go to a private directory, never via a symlink."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from servekit.runtime.stats import WorkerStats, stats_dir


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    return tmp_path


def test_counters_land_in_a_private_directory(own_tmpdir: Path) -> None:
    WorkerStats(requests=3).publish("iris", force=True)
    directory = stats_dir("iris")
    assert directory.parent == own_tmpdir / f"servekit-{os.getuid()}"
    assert json.loads((directory / f"{os.getpid()}.json").read_text())["requests"] == 3
    assert directory.stat().st_mode & 0o777 == 0o700
    assert directory.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in directory.iterdir()] == [f"{os.getpid()}.json"]


def test_a_symlink_at_the_counters_name_is_replaced_not_followed(own_tmpdir: Path) -> None:
    victim = own_tmpdir / "victim.txt"
    victim.write_text("precious")
    directory = stats_dir("iris")
    directory.mkdir(parents=True, mode=0o700)
    directory.parent.chmod(0o700)
    (directory / f"{os.getpid()}.json").symlink_to(victim)
    (directory / f".{os.getpid()}.json").symlink_to(victim)  # the old fixed temp name
    WorkerStats(requests=1).publish("iris", force=True)
    assert victim.read_text() == "precious"
    assert not (directory / f"{os.getpid()}.json").is_symlink()


def test_a_planted_directory_symlink_is_refused(own_tmpdir: Path) -> None:
    elsewhere = own_tmpdir / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    stats_dir("iris").parent.symlink_to(elsewhere)
    WorkerStats(requests=1).publish("iris", force=True)
    assert list(elsewhere.iterdir()) == []


def test_a_directory_others_can_write_is_refused(own_tmpdir: Path) -> None:
    directory = stats_dir("iris")
    directory.mkdir(parents=True)
    directory.parent.chmod(0o700)
    directory.chmod(0o777)
    WorkerStats(requests=1).publish("iris", force=True)
    assert list(directory.iterdir()) == []


def test_a_model_name_cannot_leave_the_directory() -> None:
    assert stats_dir("../../etc").name == "_._.._etc"
    assert stats_dir("../../etc").parent == stats_dir("iris").parent

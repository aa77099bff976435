"""Archives are world-readable: the images copy them as root and serve them as uid 1000."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit.config.specs import load_spec, read_yaml
from servekit.serve.archive import build
from tests.unit.test_archive_reproducible import checkout


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask of 077, as on a hardened workstation: new files are 0600 unless set."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def build_iris(root: Path, store: Path) -> Path:
    spec = load_spec(root / "config" / "iris.yml", root)
    return build(spec, read_yaml(root / "model-config.yml"), root, store, force=True).path


def test_archive_and_side_files_are_0644_whatever_the_umask(
    tmp_path: Path, strict_umask: None
) -> None:
    mar = build_iris(checkout(tmp_path / "a", 1_234_567_890), tmp_path / "store")
    for path in (mar, mar.with_name("iris.mar.inputs"), mar.with_name("iris.mar.sha256")):
        assert mode(path) == 0o644, f"{path.name}: {oct(mode(path))}"
    assert not [p.name for p in mar.parent.iterdir() if p.name.startswith(".")], "no temp left"


def test_an_up_to_date_archive_built_0600_is_made_readable(tmp_path: Path) -> None:
    root = checkout(tmp_path / "a", 1_234_567_890)
    mar = build_iris(root, tmp_path / "store")
    mar.chmod(0o600)  # what make archive left before the fix
    spec = load_spec(root / "config" / "iris.yml", root)
    result = build(spec, read_yaml(root / "model-config.yml"), root, tmp_path / "store")
    assert not result.rebuilt
    assert mode(mar) == 0o644

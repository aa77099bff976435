"""Shared fixtures: the project's archives, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit.config.specs import load_specs, read_yaml
from servekit.serve.archive import build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_store() -> Path:
    """``model_store/`` with every spec's archive up to date (what ``make archive`` does)."""
    store = ROOT / "model_store"
    defaults = read_yaml(ROOT / "model-config.yml")
    for spec in load_specs(ROOT / "config", ROOT):
        build(spec, defaults, ROOT, store)
    return store

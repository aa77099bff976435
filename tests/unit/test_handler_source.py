"""``servekit.config.handler_source``: a spec's options are checked statically, also after the
``handlers`` package was imported anew (as the harness does when it closes an archive)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from servekit.config.validate import validate_paths

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture()
def handlers_imported_anew() -> None:
    """Forget every ``handlers`` module, as ``LocalModel.close`` does, so the next import
    makes new class objects (``HandlerOptions`` among them)."""
    for name in [m for m in sys.modules if m == "handlers" or m.startswith("handlers.")]:
        del sys.modules[name]


@pytest.mark.usefixtures("handlers_imported_anew")
def test_the_toolkits_own_options_are_checked_after_handlers_was_imported_anew() -> None:
    findings = validate_paths([ROOT / "tests" / "corpus" / "specs" / "spec_option_range.yml"], ROOT)
    assert [(f.code, f.key) for f in findings] == [("bad-option", "handler.warmup_batch_size")]

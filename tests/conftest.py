"""Shared fixtures: the project's archives, built once per session; signal handlers that a
command run in-process installs (``exit_on_sigterm``) do not outlive its test."""

from __future__ import annotations

import signal
from collections.abc import Iterator
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


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)

"""Shared fixtures: the project's archives, built once per session; signal handlers that a
command run in-process installs (``exit_on_sigterm``) do not outlive its test; ``gpu`` tests
skipped where torch sees no CUDA."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run where torch sees CUDA (``make test-gpu``) and are skipped elsewhere."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch sees no GPU here (make test-gpu on one)")
    for item in gpu:
        item.add_marker(skip)

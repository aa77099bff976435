"""A real TorchServe from the project's own config, on free ports, stopped after the module."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servekit.serve.server import TorchServe, running

ROOT = Path(__file__).resolve().parent.parent.parent


def describe(server: TorchServe, model: str, customized: bool = False) -> Any:
    """The model's describe entry (its default version)."""
    return server.management().entry(model, customized=customized)


def customized(server: TorchServe, model: str) -> Any:
    """The handler's custom metadata (TorchServe 0.12 sends an object; older ones a string)."""
    metadata = describe(server, model, customized=True)["customizedMetadata"]
    return json.loads(metadata) if isinstance(metadata, str) else metadata


def every_worker(server: TorchServe, model: str, tries: int = 60) -> list[Any]:
    """The custom metadata of each of ``model``'s workers (by pid): a model served with
    several workers (as its tuned spec may say) answers a describe from any one of them, so
    counts (requests, errors, batches) are summed over all. Asks until every worker answered."""
    pids = {w["pid"] for w in describe(server, model)["workers"]}
    found: dict[int, Any] = {}
    for _ in range(tries):
        metadata = customized(server, model)
        found[metadata["worker"]["pid"]] = metadata
        if set(found) >= pids:
            return [found[pid] for pid in sorted(pids)]
    raise AssertionError(f"{model}: {tries} describes reached workers {sorted(found)} of {pids}")


def wait_ready(server: TorchServe, models: list[str], timeout: float = 180.0) -> None:
    """Until every model has at least minWorkers READY workers (polling describe)."""
    deadline = time.monotonic() + timeout
    api = server.management()
    for model in models:
        api.wait_ready(model, timeout=max(0.0, deadline - time.monotonic()))


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """The default config's server (iris, digits, empty_model), every worker READY."""
    workdir = tmp_path_factory.mktemp("torchserve")
    with running(ROOT / "config.properties", workdir, model_store=model_store) as ts:
        wait_ready(ts, ["iris", "digits", "empty_model"])
        yield ts

"""A real TorchServe from the project's own config, on free ports, stopped after the module."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from servekit.serve.server import TorchServe, running

ROOT = Path(__file__).resolve().parent.parent.parent


def describe(server: TorchServe, model: str, customized: bool = False) -> Any:
    query = "?customized=true" if customized else ""
    response = requests.get(f"{server.management_url}/models/{model}{query}", timeout=10)
    response.raise_for_status()
    return response.json()[0]


def customized(server: TorchServe, model: str) -> Any:
    """The handler's custom metadata (TorchServe 0.12 sends an object; older ones a string)."""
    metadata = describe(server, model, customized=True)["customizedMetadata"]
    return json.loads(metadata) if isinstance(metadata, str) else metadata


def wait_ready(server: TorchServe, models: list[str], timeout: float = 180.0) -> None:
    """Poll describe until every model has at least minWorkers READY workers."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending and time.monotonic() < deadline:
        entry = describe(server, pending[0])
        ready = sum(w["status"] == "READY" for w in entry["workers"])
        if ready >= max(entry["minWorkers"], 1):
            pending.pop(0)
        else:
            time.sleep(0.2)
    if pending:
        raise AssertionError(f"not READY after {timeout} s: {pending}\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """The default config's server (iris, digits, empty_model), every worker READY."""
    workdir = tmp_path_factory.mktemp("torchserve")
    with running(ROOT / "config.properties", workdir, model_store=model_store) as ts:
        wait_ready(ts, ["iris", "digits", "empty_model"])
        yield ts

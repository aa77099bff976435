"""Fixtures of this project's tests.

- ``project_root``: this project's directory (where ``pytest.ini`` is).
- ``server``: a real TorchServe on this project's ``config.properties``, started once per
  session on free ports with its own ``TMPDIR`` and logs, serving every archive in
  ``model_store/`` with every model's workers READY; always stopped. Build the archives first
  (``make test`` does). A test uses ``server.inference_url`` and ``server.management()``::

    def test_answers(server):
        reply = requests.post(f"{server.inference_url}/predictions/NAME", json={...})
        assert reply.status_code == 200
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit.serve.server import TorchServe, running

READY_TIMEOUT = 180.0  # s for every model to register and get its workers READY


@pytest.fixture(scope="session")
def project_root(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.rootpath


@pytest.fixture(scope="session")
def server(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    archives = sorted(p.stem for p in (project_root / "model_store").glob("*.mar"))
    workdir = tmp_path_factory.mktemp("torchserve")
    with running(project_root / "config.properties", workdir) as ts:
        wait_until_ready(ts, archives, READY_TIMEOUT)
        yield ts


def wait_until_ready(server: TorchServe, models: list[str], timeout: float) -> None:
    """Until every model is registered and has its minWorkers READY; a ``TimeoutError``
    naming the missing ones, with the end of the server's log, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    api = server.management()
    missing = set(models) - set(api.models())
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = set(models) - set(api.models())
    if missing:
        raise TimeoutError(
            f"not registered after {timeout:.0f} s: {', '.join(sorted(missing))}; the end of "
            f"{server.log_dir / 'ts_log.log'}:\n{server.log_tail('ts_log.log')}"
        )
    for model in models:
        api.wait_ready(model, timeout=max(0.0, deadline - time.monotonic()))

"""A project from ``servekit init``, outside the repository, run through its own Makefile with
its tools pointed at this environment: ``make test`` (its pytest, its ``server`` fixture on a
real TorchServe), then ``make serve``, ``make health`` and ``make stop`` on free ports.

A tiny model is added the way ``servekit new-model`` will: a handler, a spec and a test of its
own that uses the ``server`` and ``project_root`` fixtures and the in-process harness.
``make serve`` runs with a private ``TMPDIR`` (TorchServe's pid file and worker sockets live
there), so ``make stop`` can only stop this test's server.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from servekit import cli
from servekit.serve.server import (
    ADDRESS_KEYS,
    GRPC_KEYS,
    free_ports,
    launcher,
    read_properties,
    rewrite_properties,
)

pytestmark = pytest.mark.e2e

HANDLER = '''"""``shout``: JSON ``{"text": "..."}`` in, the text upper-cased out."""

from typing import Any

from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload
from servekit.runtime.errors import BadRequest


class ShoutHandler(ToolkitHandler[str]):
    def parse_request(self, payload: Payload) -> str:
        body = payload.json()
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise BadRequest('expected {"text": "a non-empty string"}')
        return text

    def inference(self, batch: list[str]) -> list[str]:
        return [text.upper() for text in batch]

    def postprocess(self, outputs: list[str]) -> list[dict[str, Any]]:
        return [{"shout": text} for text in outputs]

    def warmup_items(self, n: int) -> list[str]:
        return ["hello"] * n
'''
SPEC = 'name: shout\nversion: "1.0"\nhandler: handlers/shout.py\n'
MODEL_TEST = """import pytest
import requests

from servekit.serve.harness import LocalModel, Request


@pytest.mark.e2e
def test_served(server):
    reply = requests.post(f"{server.inference_url}/predictions/shout", json={"text": "hi"})
    assert reply.json() == {"shout": "HI"}
    assert server.management().models() == ["shout"]


def test_in_process(project_root):
    with LocalModel.from_mar(project_root / "model_store/shout.mar") as model:
        (reply,) = model.predict([Request.json({"text": "hi"})])
    assert reply.json() == {"shout": "HI"}
"""
STOP_WAIT = 30.0


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new project with the shout model, on free ports, outside the repository."""
    root = tmp_path_factory.mktemp("user") / "my-models"
    assert cli.main(["init", str(root)]) == cli.OK
    (root / "handlers" / "shout.py").write_text(HANDLER)
    (root / "config" / "shout.yml").write_text(SPEC)
    (root / "tests" / "test_shout.py").write_text(MODEL_TEST)
    config = root / "config.properties"
    ports = dict(zip(ADDRESS_KEYS + GRPC_KEYS, free_ports(5), strict=True))
    overrides = {key: f"http://127.0.0.1:{ports[key]}" for key in ADDRESS_KEYS}
    overrides |= {key: str(ports[key]) for key in GRPC_KEYS}
    config.write_text(rewrite_properties(config.read_text(), overrides))
    return root


@dataclasses.dataclass(frozen=True)
class Make:
    """``make TARGET`` in ``project`` with this environment's tools and a private ``TMPDIR``."""

    project: Path
    tmp: Path

    def __call__(self, target: str) -> subprocess.CompletedProcess[str]:
        tools = [
            f"PYTHON={sys.executable}",
            f"SERVEKIT={Path(sys.executable).parent / 'servekit'}",
            f"TORCHSERVE={launcher()}",
        ]
        env = {**os.environ, "TMPDIR": str(self.tmp), "TEMP": str(self.tmp)}
        return subprocess.run(
            ["make", target, *tools],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


@pytest.fixture
def make(project: Path) -> Iterator[Make]:
    """Whatever TorchServe the test started is stopped afterwards, also when it failed.

    The private ``TMPDIR`` is short: the project's pytest puts its server's worker sockets
    two levels below it, and a socket path has at most 107 bytes."""
    make = Make(project, Path(tempfile.mkdtemp(prefix="init-")))
    try:
        yield make
    finally:
        make("stop")
        stop_leftovers(make.tmp)
        shutil.rmtree(make.tmp, ignore_errors=True)


def stop_leftovers(private: Path) -> None:
    """Kill what still runs with a ``TEMP`` in this test's (the frontends and their workers,
    of ``make serve`` and of the project's own pytest)."""
    deadline = time.monotonic() + STOP_WAIT
    while (left := using(private)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for process in left:
        process.kill()
    psutil.wait_procs(left, timeout=STOP_WAIT)


def using(private: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if Path(process.environ().get("TEMP", "/")).is_relative_to(private):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def test_a_new_project_tests_serves_and_stops(make: Make, project: Path) -> None:
    tested = make("test")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout, tested.stdout
    assert (project / "model_store" / "shout.mar").is_file()

    served = make("serve")
    assert served.returncode == 0, served.stdout + served.stderr
    url = read_properties((project / "config.properties").read_text())["inference_address"]
    assert url in served.stdout  # servekit examples, on this config's address
    reply = requests.post(f"{url}/predictions/shout", json={"text": "hello"}, timeout=10)
    assert reply.json() == {"shout": "HELLO"}

    health = make("health")
    assert health.returncode == 0, health.stdout + health.stderr
    assert "shout" in health.stdout

    stopped = make("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    stop_leftovers(make.tmp)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)

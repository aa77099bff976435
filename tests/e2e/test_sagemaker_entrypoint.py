"""deploy/sagemaker/entrypoint.sh outside Docker: `entrypoint.sh serve` as SageMaker runs it,
on free loopback ports with its own TMPDIR and working directory; /ping and /invocations."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from servekit.serve.management import Management
from servekit.serve.processes import stop_group
from servekit.serve.server import free_ports, read_properties
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e
ENTRYPOINT = ROOT / "deploy" / "sagemaker" / "entrypoint.sh"


@dataclasses.dataclass
class Container:
    """The entrypoint's process group, as a container would hold it."""

    process: subprocess.Popen[bytes]
    url: str
    management_url: str
    workdir: Path

    def log(self) -> str:
        path = self.workdir / "console.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def entrypoint_env(workdir: Path, model_store: Path, **extra: str) -> dict[str, str]:
    """Env of one isolated run: own ports, TMPDIR, working dir; TorchServe from this venv."""
    inference, management, metrics = free_ports(3)
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        # The JVM ignores TMPDIR; its java.io.tmpdir holds the worker sockets (.ts.sock.9000...),
        # which would collide with any other TorchServe on this machine.
        "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={tmp}",
        "SERVEKIT_WORKDIR": str(workdir / "work"),
        "SERVEKIT_MODEL_STORE": str(model_store),
        "SERVEKIT_BIND_HOST": "127.0.0.1",  # the image's default is 0.0.0.0; tests stay on loopback
        "SAGEMAKER_BIND_TO_PORT": str(inference),
        "SERVEKIT_MANAGEMENT_PORT": str(management),
        "SERVEKIT_METRICS_PORT": str(metrics),
        **extra,
    }


def start(args: list[str], env: Mapping[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    with open(workdir / "console.log", "ab") as console:
        return subprocess.Popen(
            ["bash", str(ENTRYPOINT), *args],
            cwd=workdir,
            env=dict(env),
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the entrypoint and everything it started (JVM, workers); safe to call twice."""
    stop_group(process, 30)


def wait_for_ping(container: Container, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.process.poll() is not None:
            raise AssertionError(
                f"entrypoint exited with {container.process.returncode}\n{container.log()}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{container.url}/ping", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"/ping not 200 within {timeout} s\n{container.log()}")


@pytest.fixture(scope="module")
def container(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    workdir = tmp_path_factory.mktemp("sagemaker")
    env = entrypoint_env(workdir, model_store)
    process = start(["serve"], env, workdir)
    try:
        running = Container(
            process,
            f"http://127.0.0.1:{env['SAGEMAKER_BIND_TO_PORT']}",
            f"http://127.0.0.1:{env['SERVEKIT_MANAGEMENT_PORT']}",
            workdir,
        )
        wait_for_ping(running)
        yield running
    finally:
        kill_group(process)


def invoke(container: Container, body: bytes) -> requests.Response:
    return requests.post(
        f"{container.url}/invocations",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        timeout=60,
    )


def test_ping_is_healthy(container: Container) -> None:
    response = requests.get(f"{container.url}/ping", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


@pytest.mark.parametrize(
    ("features", "label"),
    [([6.7, 3.0, 5.2, 2.3], "virginica"), ([5.1, 3.5, 1.4, 0.2], "setosa")],
)
def test_invocations_predicts_with_the_configured_model(
    container: Container, features: list[float], label: str
) -> None:
    response = invoke(container, json.dumps({"features": features}).encode())
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert prediction["label"] == label
    assert max(prediction["probabilities"], key=prediction["probabilities"].get) == label


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{oops", "not valid JSON"),
        (b'{"features": [1, 2, "three", 4]}', "petal_length"),
    ],
)
def test_invocations_bad_body_is_a_json_4xx(
    container: Container, body: bytes, fragment: str
) -> None:
    response = invoke(container, body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 400 and error["type"] == "BadRequest"
    assert fragment in error["message"]


def test_serves_only_the_sagemaker_model_with_management_on_loopback(
    container: Container,
) -> None:
    assert Management(container.management_url).models() == ["iris"]
    written = read_properties((container.workdir / "work" / "config.properties").read_text())
    project = read_properties((ROOT / "config.properties").read_text())
    changed = {k for k in written.keys() | project.keys() if written.get(k) != project.get(k)}
    assert changed == {
        "inference_address",
        "management_address",
        "metrics_address",
        "model_store",
        "load_models",
    }
    assert written["inference_address"] == container.url
    assert written["management_address"] == container.management_url
    assert written["metrics_address"].startswith("http://127.0.0.1:")
    assert written["load_models"] == "iris.mar"
    assert written["disable_token_authorization"] == "true"


def test_entrypoint_execs_torchserve_in_the_foreground(container: Container) -> None:
    # exec: the entrypoint's own pid is now TorchServe, which a container's init signals.
    argv = Path(f"/proc/{container.process.pid}/cmdline").read_bytes().split(b"\0")
    assert any(arg.endswith(b"torchserve") for arg in argv), argv
    assert b"--foreground" in argv


@pytest.mark.parametrize(
    ("args", "extra", "code", "message"),
    [
        (["serve", "extra"], {}, 2, "usage:"),
        (["train"], {}, 2, "usage:"),
        (["serve"], {"SAGEMAKER_MODEL": "ghost"}, 1, "no ghost.mar in"),
        (["serve"], {"SAGEMAKER_MODEL": "../iris"}, 1, "is not a model name"),
        (["serve"], {"SAGEMAKER_BIND_TO_PORT": "http"}, 1, "port 'http' is not a number"),
        (["serve"], {"SERVEKIT_METRICS_PORT": "70000"}, 1, "port '70000' is not a number"),
        # A newline in the bind host would add its own line to the generated config.
        (
            ["serve"],
            {"SERVEKIT_BIND_HOST": "127.0.0.1\nenable_model_api=true"},
            1,
            "SERVEKIT_BIND_HOST=$'127.0.0.1\\nenable_model_api=true' is not a host name",
        ),
        (["serve"], {"SERVEKIT_BIND_HOST": "127.0.0.1:9"}, 1, "is not a host name"),
        (["serve"], {"SERVEKIT_BIND_HOST": "127.0.0.1\\"}, 1, "is not a host name"),
        (["serve"], {"SERVEKIT_BIND_HOST": "$$HOME$$"}, 1, "is not a host name"),
        (["serve"], {"PATH": "/usr/bin:/bin"}, 1, "torchserve is not on PATH"),
    ],
)
def test_entrypoint_refuses_bad_arguments_before_starting(
    model_store: Path,
    tmp_path: Path,
    args: list[str],
    extra: dict[str, str],
    code: int,
    message: str,
) -> None:
    process = start(args, entrypoint_env(tmp_path, model_store, **extra), tmp_path)
    try:
        returncode = process.wait(60)
    finally:
        kill_group(process)
    output = (tmp_path / "console.log").read_text()
    assert returncode == code, output
    assert message in output
    assert not (tmp_path / "work" / "config.properties").exists()


def test_a_model_store_path_that_could_inject_config_lines_is_refused(
    model_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store\nenable_model_api=true"
    store.mkdir()
    (store / "iris.mar").symlink_to(model_store / "iris.mar")
    process = start(["serve"], entrypoint_env(tmp_path, store), tmp_path)
    try:
        returncode = process.wait(60)
    finally:
        kill_group(process)
    output = (tmp_path / "console.log").read_text()
    assert returncode == 1, output
    assert "SERVEKIT_MODEL_STORE=" in output and "has characters a config line" in output
    assert not (tmp_path / "work" / "config.properties").exists()


# ----- the generated config is written only where nobody else can write ---------------------
STUB_TORCHSERVE = """#!/usr/bin/env bash
# Stands in for torchserve: records the config it was given, then exits.
while [[ $# -gt 0 ]]; do
    [[ "$1" == --ts-config ]] && cp -- "$2" "$STUB_RECORD"
    shift
done
"""


def run_with_stub(tmp_path: Path, **extra: str) -> tuple[int, str]:
    """The real entrypoint with a stub torchserve on PATH: fast, no Java, no model needed."""
    bin_dir, store = tmp_path / "bin", tmp_path / "store"
    bin_dir.mkdir(exist_ok=True)
    store.mkdir(exist_ok=True)
    (store / "iris.mar").write_bytes(b"")
    stub = bin_dir / "torchserve"
    stub.write_text(STUB_TORCHSERVE)
    stub.chmod(0o755)
    env = entrypoint_env(tmp_path, store, STUB_RECORD=str(tmp_path / "record"), **extra)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", str(ENTRYPOINT), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


def test_the_config_is_not_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "config.properties").symlink_to(victim)
    code, err = run_with_stub(tmp_path)
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    written = work / "config.properties"
    assert not written.is_symlink() and "load_models=iris.mar" in written.read_text()
    assert (tmp_path / "record").read_text() == written.read_text()


def test_the_default_workdir_is_a_new_private_directory(tmp_path: Path) -> None:
    # The old default, $TMPDIR/servekit, was predictable: anyone could plant it first.
    planted = tmp_path / "tmp" / "servekit"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (planted / "config.properties").symlink_to(victim)
    code, err = run_with_stub(tmp_path, SERVEKIT_WORKDIR="")
    assert code == 0, err
    assert victim.read_text() == "precious\n"
    (workdir,) = (tmp_path / "tmp").glob("servekit.*")
    assert workdir.stat().st_mode & 0o077 == 0
    assert "load_models=iris.mar" in (workdir / "config.properties").read_text()


@pytest.mark.parametrize("kind", ["group-writable", "world-writable", "symlink"])
def test_a_workdir_others_can_write_is_refused(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    if kind == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        work.symlink_to(target)
    else:
        work.mkdir()
        work.chmod(0o770 if kind == "group-writable" else 0o777)
    code, err = run_with_stub(tmp_path)
    assert code == 1, err
    assert "SERVEKIT_WORKDIR=" in err
    assert not (work / "config.properties").exists()
    assert not (tmp_path / "record").exists()

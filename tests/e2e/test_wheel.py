"""The toolkit as a user installs it: a wheel, installed non-editable into a fresh virtual
environment outside the repository, used from a project directory that is not the repository.

The new environments reuse the already installed dependencies (torch, TorchServe, ...) through
a ``.pth`` line, which adds a directory to ``sys.path`` without running the ``.pth`` files found
there: the repository's editable install of servekit stays invisible to them.

- ``user``: the wheel installed; runs ``servekit validate``, ``archive`` and ``health``.
- ``bare``: no servekit at all; TorchServe and its workers run on it, so the archive must carry
  everything its handler imports (``servekit.runtime`` included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from servekit.serve.server import TorchServe

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = ["pyproject.toml", "README.md", "servekit"]
BENCH_ONLY = {"aiohttp", "matplotlib", "starlette", "uvicorn", "litserve", "fastapi"}

HANDLER = '''"""A tiny handler: the sum of a list of numbers, through the installed runtime."""

from __future__ import annotations

from typing import Any

from handlers.common.numbers import total
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload
from servekit.runtime.errors import BadRequest


class SumHandler(ToolkitHandler[list[float]]):
    input_schema = {"numbers": "a list of up to 100 numbers"}
    output_schema = {"sum": "their sum"}

    def parse_request(self, payload: Payload) -> list[float]:
        value = payload.json()
        numbers = value.get("numbers") if isinstance(value, dict) else None
        if not isinstance(numbers, list) or len(numbers) > 100:
            raise BadRequest("'numbers' must be a list of up to 100 numbers")
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            raise BadRequest("every item of 'numbers' must be a number")
        return [float(n) for n in numbers]

    def inference(self, batch: list[list[float]]) -> list[float]:
        return [total(numbers) for numbers in batch]

    def postprocess(self, outputs: list[float]) -> list[dict[str, Any]]:
        return [{"sum": total} for total in outputs]

    def warmup_items(self, n: int) -> list[list[float]]:
        return [[1.0, 2.0]] * n
'''

HELPER = '''"""A helper in a subpackage of the project's handlers: the archive must carry it."""


def total(numbers: list[float]) -> float:
    return sum(numbers)
'''

SPEC = """name: tiny
version: "1.0"
handler: handlers/tiny.py
model_config:
  batchSize: 2
  maxBatchDelay: 10
handler_options: {}
"""


def run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what it is built from (the repo stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(base / "dist"),
            str(source),
        ],
        cwd=base,
    )
    assert done.returncode == 0, done.stderr
    (built,) = (base / "dist").glob("torchserve_kit-*.whl")
    return built


def new_env(path: Path, wheel: Path | None) -> Path:
    """A virtual environment at ``path`` seeing the installed dependencies; ``wheel`` in it."""
    done = run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    assert done.returncode == 0, done.stderr
    python = path / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=path,
    ).stdout.strip()
    Path(purelib, "_installed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if wheel is not None:
        done = run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                str(wheel),
            ],
            cwd=path.parent,
        )
        assert done.returncode == 0, done.stderr
    return python


@pytest.fixture(scope="module")
def envs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("envs")
    return {"user": new_env(base / "user", wheel), "bare": new_env(base / "bare", None)}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user's project: the repo's server config, one spec, one handler; nothing else."""
    root = tmp_path / "project"
    (root / "config").mkdir(parents=True)
    (root / "handlers").mkdir()
    shutil.copy2(ROOT / "model-config.yml", root / "model-config.yml")
    shutil.copy2(ROOT / "config" / "log4j2.xml", root / "config" / "log4j2.xml")
    properties = (ROOT / "config.properties").read_text()
    properties = "\n".join(
        "load_models=tiny.mar" if line.startswith("load_models=") else line
        for line in properties.splitlines()
    )
    (root / "config.properties").write_text(properties + "\n")
    (root / "config" / "tiny.yml").write_text(SPEC)
    (root / "handlers" / "__init__.py").write_text('"""The project\'s handlers."""\n')
    (root / "handlers" / "tiny.py").write_text(HANDLER)
    (root / "handlers" / "common").mkdir()
    (root / "handlers" / "common" / "__init__.py").write_text("")
    (root / "handlers" / "common" / "numbers.py").write_text(HELPER)
    return root


def test_the_wheel_holds_the_whole_package_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "servekit").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "servekit/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "handlers/", "scripts/"))]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    default = {r.split("==")[0].split(";")[0].strip() for r in requires if "extra ==" not in r}
    assert "torchserve" in default and "torch-model-archiver" in default
    assert not default & BENCH_ONLY, default & BENCH_ONLY
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "servekit = servekit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


class BareTorchServe(TorchServe):
    """TorchServe launched by an interpreter with no servekit: its workers run on it too."""

    python: Path = Path(sys.executable)

    def start(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        launcher = (
            "import sys; from ts.model_server import start; sys.argv[0] = 'torchserve'; start()"
        )
        command = [
            str(self.python), "-c", launcher, "--start", "--foreground", "--ncs",
            "--ts-config", str(self.write_config()), "--model-store", str(self.model_store),
        ]  # fmt: skip
        with open(self.log_dir / "console.log", "ab") as console:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env={**self.env(), "PATH": f"{self.python.parent}:{os.environ['PATH']}"},
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )


@pytest.fixture()
def served(project: Path, envs: dict[str, Path], tmp_path: Path) -> Iterator[TorchServe]:
    servekit = str(envs["user"].parent / "servekit")
    for command in (["validate"], ["archive"]):
        done = run([servekit, *command], cwd=project)
        assert done.returncode == 0, f"servekit {command[0]}:\n{done.stdout}\n{done.stderr}"
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = BareTorchServe(project / "config.properties", workdir, models=["tiny"])
    server.python = envs["bare"]
    with server:
        server.wait_until_up()
        yield server


def test_the_installed_command_validates_archives_and_checks_a_project(
    served: TorchServe, project: Path, envs: dict[str, Path]
) -> None:
    user, bare = envs["user"], envs["bare"]
    where = run([str(user), "-c", "import servekit; print(servekit.__file__)"], cwd=project)
    assert where.stdout.strip().startswith(str(user.parent.parent)), where
    missing = run([str(bare), "-c", "import servekit"], cwd=project)
    assert "No module named 'servekit'" in missing.stderr  # the workers' interpreter has none
    names = zipfile.ZipFile(project / "model_store" / "tiny.mar").namelist()
    assert {"handlers/tiny.py", "servekit/runtime/base.py", "tiny.py"} <= set(names)
    assert "handlers/common/numbers.py" in names

    health = run(
        [str(user.parent / "servekit"), "health", "--inference-url", served.inference_url,
         "--management-url", served.management_url, "--customized", "--wait", "120", "--json"],
        cwd=project,
        timeout=180,
    )  # fmt: skip
    assert health.returncode == 0, f"{health.stdout}\n{health.stderr}\n{served.log_tail()}"
    assert json.loads(health.stdout)["healthy"] is True

    url = f"{served.inference_url}/predictions/tiny"
    answer = requests.post(url, json={"numbers": [1, 2, 3.5]}, timeout=30)
    assert (answer.status_code, answer.json()) == (200, {"sum": 6.5})
    refused = requests.post(url, json={"numbers": ["x"]}, timeout=30)
    assert refused.status_code == 400 and "number" in refused.json()["message"]


def test_health_says_why_a_handler_cannot_be_imported(
    project: Path, envs: dict[str, Path], tmp_path: Path
) -> None:
    """A handler importing what its archive lacks: the workers die at import, and
    ``servekit health --log-dir`` names the missing module."""
    servekit = str(envs["user"].parent / "servekit")
    handler = project / "handlers" / "tiny.py"
    handler.write_text(HANDLER.replace("handlers.common.numbers", "handlers.common.gone"))
    done = run([servekit, "archive"], cwd=project)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = BareTorchServe(project / "config.properties", workdir, models=["tiny"])
    server.python = envs["bare"]
    with server:
        server.wait_until_up()
        urls = ["--inference-url", server.inference_url, "--management-url", server.management_url]
        command = [servekit, "health", *urls, "--log-dir", str(server.log_dir)]
        deadline = time.monotonic() + 120
        while True:  # polls until the first worker has died and logged why
            health = run(command, cwd=project, timeout=60)
            if "init error" in health.stdout or time.monotonic() > deadline:
                break
    assert health.returncode == 1, f"{health.stdout}\n{health.stderr}"
    assert (
        "init error: the worker died: ModuleNotFoundError: No module named 'handlers.common.gone'"
        in health.stdout
    ), f"{health.stdout}\n{server.log_tail()}"


def test_the_installed_command_refuses_a_directory_that_is_no_project(
    envs: dict[str, Path], tmp_path: Path
) -> None:
    done = run([str(envs["user"].parent / "servekit"), "archive"], cwd=tmp_path)
    assert done.returncode == 2, done
    assert "not a servekit project" in done.stderr and "Traceback" not in done.stderr

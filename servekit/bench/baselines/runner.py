"""Start a baseline server as a subprocess on a free loopback port; always stop it.

    >>> from servekit.bench.baselines.runner import running_baseline
    >>> mar = Path("model_store/minilm.mar")
    >>> with running_baseline("starlette", mar) as server:      # doctest: +SKIP
    ...     print(server.predict_url)      # the same loadgen Target works against it

Each server runs in its own process group (``start_new_session``), so stopping it also stops
LitServe's worker processes; output goes to ``<log_dir>/<kind>.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests

from servekit.errors import ConfigError, ToolkitError
from servekit.serve.processes import stop_group
from servekit.serve.server import free_ports


class BaselineError(ToolkitError):
    """A baseline server exited or did not become healthy."""


@dataclasses.dataclass(frozen=True)
class Kind:
    module: str
    health_path: str


KINDS = {
    "starlette": Kind("servekit.bench.baselines.starlette_server", "/ping"),
    "litserve": Kind("servekit.bench.baselines.litserve_server", "/health"),
}


@dataclasses.dataclass
class Baseline:
    """One started baseline server."""

    kind: str
    port: int
    model: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/predictions/{self.model}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = 180.0) -> None:
        """Poll the health path until it answers 200; fail fast if the process exits."""
        url = self.base_url + KINDS[self.kind].health_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BaselineError(
                    f"{self.kind} server exited with {self.process.returncode}; "
                    f"last lines of {self.log}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        # the log's lines, not only its path: the log directory is often a temp dir, gone by
        # the time the message is read
        raise BaselineError(
            f"{self.kind} server: {url} not 200 within {timeout:g} s; last lines of {self.log}:\n"
            f"{self.log_tail() or '(empty)'}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left; safe to call twice."""
        stop_group(self.process, timeout)  # LitServe's workers may outlive their parent


def start(
    kind: str, mar: Path, log_dir: Path, port: int | None = None, args: Sequence[str] = ()
) -> Baseline:
    """Start ``kind`` (``starlette`` or ``litserve``) serving ``mar``; not yet waited on."""
    if kind not in KINDS:
        raise ConfigError(f"unknown baseline {kind!r}; known: {', '.join(sorted(KINDS))}")
    if not mar.is_file():
        raise ConfigError(f"archive {mar} does not exist; build it with 'servekit archive'")
    port = port or free_ports(1)[0]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind}.log"
    command = [sys.executable, "-m", KINDS[kind].module, "--mar", str(mar.resolve())]
    command += ["--port", str(port), *args]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=log_dir,  # the installed package runs; nothing is read from here
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Baseline(kind, port, mar.stem, log, process)


@contextlib.contextmanager
def running_baseline(
    kind: str,
    mar: Path,
    log_dir: Path | None = None,
    args: Sequence[str] = (),
    timeout: float = 180.0,
) -> Iterator[Baseline]:
    """A started, healthy baseline server; stopped on exit, also on failure."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="baseline-")))
        server = start(kind, mar, log_dir, args=args)
        stack.callback(server.stop)
        server.wait_healthy(timeout)
        yield server

"""Start and stop an isolated TorchServe: own ports, ``TMPDIR``, working directory and logs.

Used by the end-to-end tests (and by anyone who needs several servers side by
side). The project's ``config.properties`` is copied with only the addresses,
the model store and, if asked, the model list replaced.

    >>> with TorchServe(Path("config.properties"), Path("/tmp/ts1")) as ts:   # doctest: +SKIP
    ...     ts.wait_until_up()
    ...     requests.get(ts.inference_url + "/ping").json()
    {'status': 'Healthy'}
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import requests

from servekit.config.properties import LOG4J_OPTION, log_config_file, property_values
from servekit.errors import ServerError
from servekit.serve.management import Management
from servekit.serve.processes import stop_group

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_KEYS = ("grpc_inference_port", "grpc_management_port")
CONSOLE_LOG = "console.log"
CONSOLE_TAIL_LINES = 20
LAUNCHER = "torchserve"


def launcher() -> str:
    """The ``torchserve`` script: beside this interpreter (a venv, ``pip install``), else the
    one on ``PATH`` (``pip install --user``, /usr/local/bin); ``ServerError`` saying what to do."""
    beside = Path(sys.executable).parent / LAUNCHER
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(LAUNCHER)
    if found is None:
        raise ServerError(
            f"cannot find the {LAUNCHER} command (not beside {sys.executable}, not on PATH): "
            f"install it (pip install torchserve) or put the directory holding it on PATH"
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def read_properties(text: str) -> dict[str, str]:
    """``key -> value`` of a Java properties file, as TorchServe reads it (the one parser:
    ``servekit.config.properties``); ``ConfigError`` on a malformed ``\\u`` escape."""
    return property_values(text)


def rewrite_properties(text: str, overrides: Mapping[str, str]) -> str:
    """``text`` with the values of ``overrides`` replaced in place, missing keys appended."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if key in overrides and not line.lstrip().startswith(("#", "!")):
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


def absolute_log_config(vmargs: str, base: Path) -> str:
    """``vmargs`` with a relative ``-Dlog4j.configurationFile=`` path made absolute from
    ``base`` (the config's directory): the JVM would resolve it from its working directory."""
    words = []
    for word in vmargs.split():
        path = log_config_file(word)
        if path is not None and not Path(path).is_absolute():
            word = LOG4J_OPTION + str((base / path).resolve())
        words.append(word)
    return " ".join(words)


@dataclasses.dataclass
class TorchServe:
    """One TorchServe process tree, isolated in ``workdir``; always stop it (or use ``with``)."""

    config: Path
    workdir: Path
    model_store: Path | None = None
    models: list[str] | None = None
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment for the frontend and so its workers (e.g. ``OMP_NUM_THREADS``)."""
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        base = read_properties(self.config.read_text())
        store = self.model_store or (self.config.parent / base.get("model_store", "model_store"))
        self.model_store = store.resolve()
        ports = free_ports(len(ADDRESS_KEYS) + len(GRPC_KEYS))
        self.ports = dict(zip(ADDRESS_KEYS + GRPC_KEYS, ports, strict=True))
        self.inference_url = f"http://127.0.0.1:{self.ports['inference_address']}"
        self.management_url = f"http://127.0.0.1:{self.ports['management_address']}"
        self.metrics_url = f"http://127.0.0.1:{self.ports['metrics_address']}"

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    def management(self, timeout: float = 10.0) -> Management:
        """The management API client of this server; its errors end with the log tail."""
        return Management(self.management_url, timeout=timeout, context=self.log_tail)

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def write_config(self) -> Path:
        overrides = {key: f"http://127.0.0.1:{self.ports[key]}" for key in ADDRESS_KEYS}
        overrides |= {key: str(self.ports[key]) for key in GRPC_KEYS}
        overrides["model_store"] = str(self.model_store)
        text = self.config.read_text()
        vmargs = read_properties(text).get("vmargs")
        if vmargs:
            overrides["vmargs"] = absolute_log_config(vmargs, self.config.parent)
        if self.models is not None:
            overrides["load_models"] = ",".join(f"{m}.mar" for m in self.models) or "standalone"
        overrides |= dict(self.extra)
        path = self.workdir / "config.properties"
        path.write_text(rewrite_properties(text, overrides))
        return path

    def env(self) -> dict[str, str]:
        """Environment of this server's commands: its own temp dir and log locations.

        The launcher hands ``TEMP`` (not ``TMPDIR``) to the JVM as ``java.io.tmpdir``, where
        the worker sockets live: without it every server here shares /tmp/.ts.sock.9000.
        """
        return {
            **os.environ,
            "TMPDIR": str(self.tmpdir),
            "TEMP": str(self.tmpdir),
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            **self.environment,
        }

    def start(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            launcher(),
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(self.write_config()),
            "--model-store",
            str(self.model_store),
        ]
        with open(self.log_dir / CONSOLE_LOG, "ab") as console:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env(),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_until_up(self, timeout: float = 120.0) -> None:
        """Poll ``/ping`` until the frontend answers (with any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                # the message carries the reason: the workdir may be gone when it is read
                tail = self.log_tail(CONSOLE_LOG, lines=CONSOLE_TAIL_LINES)
                raise ServerError(
                    f"TorchServe exited with {self.process.returncode} at start; the end of "
                    f"{self.log_dir / CONSOLE_LOG}:\n{tail or '(empty)'}"
                )
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{self.inference_url}/ping", timeout=2)
                return
            time.sleep(0.2)
        raise ServerError(f"TorchServe did not answer /ping within {timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and every worker it started; safe to call twice."""
        if self.process is None:
            return
        stop_group(self.process, timeout)
        self.process = None

    def log_tail(self, name: str = "model_log.log", lines: int = 40) -> str:
        path = self.log_dir / name
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running(config: Path, workdir: Path, **kwargs: object) -> Iterator[TorchServe]:
    """A started server that is up; stopped on exit, also on failure."""
    server = TorchServe(config, workdir, **kwargs)  # type: ignore[arg-type]
    with server:
        server.wait_until_up()
        yield server

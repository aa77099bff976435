"""Private RabbitMQ and Redis from the system's packages: own ports, own data, always stopped.

For ``servekit bridge --local-brokers`` (``make bridge``), the benchmarks and the tests.
Each server runs as a foreground child in its own process group,
listens on loopback only, keeps its data and logs under ``workdir`` and never touches the
default ports or a system service.

    >>> with brokers(Path("run/brokers")) as (rabbit, red):  # doctest: +SKIP
    ...     rabbit.url, red.url
    ('amqp://guest:guest@127.0.0.1:40123/%2F', 'redis://127.0.0.1:40125/0')

Install the servers with ``apt-get install -y rabbitmq-server redis-server`` (``.ci/run`` does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pika
import redis

from servekit.errors import ServerError
from servekit.serve.processes import stop_group
from servekit.serve.server import free_ports

RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian: runs as the caller
START_TIMEOUT = 60.0
POLL_INTERVAL = 0.2


def find_program(name: str, preferred: Path | None = None) -> str:
    """Absolute path of ``name``; the error says which package installs it."""
    if preferred is not None and preferred.exists():
        return str(preferred)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise ServerError(
            f"{name} is not installed; install it with "
            "'apt-get install -y rabbitmq-server redis-server' (.ci/run does this)"
        )
    return found


@dataclass
class Process:
    """A foreground server process in its own session; ``stop`` kills its whole group."""

    name: str
    command: Sequence[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.command),
                cwd=self.workdir,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited during startup; see {self.log_path}")
            if ready():
                return
            time.sleep(POLL_INTERVAL)
        raise ServerError(f"{self.name} was not ready within {timeout} s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the group (both servers shut down cleanly on it), then SIGKILL what is left."""
        if self.popen is None:
            return
        stop_group(self.popen, timeout)
        self.popen = None


def _amqp_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        params = pika.ConnectionParameters(
            "127.0.0.1", port, connection_attempts=1, socket_timeout=2
        )
        try:  # a plain connect first: pika logs every refused attempt as an error
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return False
        try:
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    return ready


def _redis_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    return ready


@dataclass
class RabbitMQ:
    """``rabbitmq-server`` with its own epmd, node name, ports, Mnesia and log directories."""

    workdir: Path
    port: int = 0  # 0: a free port
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        port, self.dist_port, self.epmd_port = free_ports(3)
        self.port = self.port or port
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        base = self.workdir
        return {
            "HOME": str(base),  # the Erlang cookie goes here, not in the caller's home
            "RABBITMQ_NODENAME": f"rabbit-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = true\n"
            "log.file = false\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "advanced.config").write_text("[].\n")

    def start(self) -> None:
        self._write_config()
        epmd = Process(
            "epmd",
            [find_program("epmd"), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            self.workdir,
        )
        server = Process(
            "rabbitmq",
            [find_program("rabbitmq-server", RABBITMQ_SCRIPT)],
            self.workdir,
            self._env(),
        )
        self.processes = [epmd, server]
        epmd.start()
        server.start()
        server.wait_until(_amqp_ready(self.port))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []


@dataclass
class Redis:
    """``redis-server`` on its own port and directory; every write in its AOF before the reply."""

    workdir: Path
    port: int = 0  # 0: a free port
    process: Process | None = None

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.port = self.port or free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            find_program("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            # An acknowledged message's result must survive a restart: the bridge acks only
            # after the write, so every write is on disk first (AOF, fsync on each write).
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = Process("redis", command, self.workdir)
        self.process.start()
        self.process.wait_until(_redis_ready(self.port))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@contextlib.contextmanager
def brokers(
    workdir: Path, amqp_port: int = 0, redis_port: int = 0
) -> Iterator[tuple[RabbitMQ, Redis]]:
    """A started RabbitMQ and Redis under ``workdir``; both stopped on exit, also on failure."""
    rabbit = RabbitMQ(workdir / "rabbitmq", amqp_port)
    red = Redis(workdir / "redis", redis_port)
    try:
        red.start()
        rabbit.start()
        yield rabbit, red
    finally:
        rabbit.stop()
        red.stop()

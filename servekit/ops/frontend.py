"""The TorchServe frontend behind a management URL, found on this machine: where it keeps its
model store and writes its logs (the management API tells neither).

The frontend is the Java process running ``org.pytorch.serve.ModelServer`` that listens on
the URL's port. Its model store is its ``-s``/``--model-store`` argument, else the
``model_store`` of its ``-f`` config file (relative to its working directory); its logs are in
its ``LOG_LOCATION``, else ``logs/`` under its working directory (TorchServe's log4j2 default).
Only this user's processes are looked at; ``None`` when none fits (another machine, another
user, a container).

    >>> find_frontend("http://127.0.0.1:8081")                # doctest: +SKIP
    Frontend(pid=4242, workdir=PosixPath('/srv/models'), model_store=..., log_dir=...)

``servekit stop`` finds it by pid instead (``from_pid``, TorchServe's pid file
``$TMPDIR/.model_server.pid``): there it also needs the management address of the config and
the ``TMPDIR`` of the environment the workers inherit.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from servekit.config.properties import property_values
from servekit.errors import ConfigError, ServerError

MAIN_CLASS = "org.pytorch.serve.ModelServer"
STORE_OPTIONS = ("-s", "--model-store")
CONFIG_OPTIONS = ("-f", "--ts-config-file")
MAX_CONFIG_BYTES = 1 << 20
PID_FILE = ".model_server.pid"  # written by `torchserve --start` in its TMPDIR
DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"


class NoServer(ServerError):
    """No TorchServe runs where the command looked."""


@dataclass(frozen=True)
class Frontend:
    pid: int
    workdir: Path
    model_store: Path | None
    log_dir: Path
    config: dict[str, str] = field(default_factory=dict)
    """Its ``-f`` config file's keys (empty when it has none or it cannot be read)."""
    tmpdir: Path = Path("/tmp")
    """The ``TMPDIR`` its workers inherit: where their status files and drain marker live."""

    management_address: str | None = None
    """``TS_MANAGEMENT_ADDRESS`` of its environment (which wins), else its config's."""

    @property
    def management_url(self) -> str:
        address = self.management_address or self.config.get("management_address")
        return (address or DEFAULT_MANAGEMENT).rstrip("/")


def pid_file(tmpdir: Path | None = None) -> Path:
    return (tmpdir or Path(tempfile.gettempdir())) / PID_FILE


def from_pid(pid: int | None = None, path: Path | None = None) -> Frontend:
    """The frontend of ``pid``, else of the pid file ``path`` (default: this ``TMPDIR``'s);
    ``NoServer`` when none runs there."""
    if pid is None:
        path = path or pid_file()
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise NoServer(f"no TorchServe pid file at {path} (is TorchServe running?)") from None
    try:
        process = psutil.Process(pid)
        args = process.cmdline()
    except psutil.NoSuchProcess:
        raise NoServer(f"TorchServe (pid {pid}) is not running") from None
    except psutil.Error as err:
        raise ServerError(f"cannot inspect process {pid}: {err}") from None
    if MAIN_CLASS not in args:
        raise NoServer(f"process {pid} is not a TorchServe frontend ({' '.join(args)[:120]})")
    try:
        return _frontend(process, args)
    except psutil.Error as err:
        raise ServerError(f"cannot inspect TorchServe (pid {pid}): {err}") from None


def find_frontend(management_url: str) -> Frontend | None:
    """This user's TorchServe frontend listening on ``management_url``'s port, or ``None``."""
    port = urlsplit(management_url).port or 80
    for process in psutil.process_iter(["cmdline", "uids"]):
        try:
            args = process.info["cmdline"] or []
            if MAIN_CLASS not in args or process.info["uids"].real != os.getuid():
                continue
            if any(_listens(c, port) for c in process.net_connections("tcp")):
                return _frontend(process, args)
        except psutil.Error:
            continue
    return None


def _listens(connection: object, port: int) -> bool:
    address = getattr(connection, "laddr", None)
    return getattr(connection, "status", "") == psutil.CONN_LISTEN and (
        getattr(address, "port", None) == port
    )


def _frontend(process: psutil.Process, args: Sequence[str]) -> Frontend:
    workdir = Path(process.cwd())
    try:
        environ = process.environ()
    except psutil.Error:
        environ = {}
    log_dir = workdir / (environ.get("LOG_LOCATION") or "logs")
    config_file = _option(args, CONFIG_OPTIONS)
    config = {} if config_file is None else _config(workdir / config_file)
    tmp = next((environ[k] for k in ("TMPDIR", "TEMP", "TMP") if environ.get(k)), None)
    return Frontend(
        process.pid,
        workdir,
        _model_store(args, workdir, config),
        log_dir,
        config,
        Path(tmp or tempfile.gettempdir()),
        environ.get("TS_MANAGEMENT_ADDRESS") or None,
    )


def _model_store(
    args: Sequence[str], workdir: Path, config: dict[str, str] | None = None
) -> Path | None:
    store = _option(args, STORE_OPTIONS)
    if store is None:
        if config is None:
            config_file = _option(args, CONFIG_OPTIONS)
            config = {} if config_file is None else _config(workdir / config_file)
        store = config.get("model_store") or None
    return None if store is None else workdir / store


def _option(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The value after the last of ``names`` in ``args`` (the one that wins)."""
    found = None
    for flag, value in itertools.pairwise(args):
        if flag in names:
            found = value
    return found


def _config(path: Path) -> dict[str, str]:
    """The keys of a config.properties; empty when it cannot be read."""
    try:
        with path.open("rb") as config:
            text = config.read(MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
        return property_values(text)
    except (OSError, ConfigError):
        return {}

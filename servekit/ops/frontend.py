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
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from servekit.config.properties import property_values
from servekit.errors import ConfigError

MAIN_CLASS = "org.pytorch.serve.ModelServer"
STORE_OPTIONS = ("-s", "--model-store")
CONFIG_OPTIONS = ("-f", "--ts-config-file")
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Frontend:
    pid: int
    workdir: Path
    model_store: Path | None
    log_dir: Path


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
        location = process.environ().get("LOG_LOCATION")
    except psutil.Error:
        location = None
    log_dir = workdir / (location or "logs")
    return Frontend(process.pid, workdir, _model_store(args, workdir), log_dir)


def _model_store(args: Sequence[str], workdir: Path) -> Path | None:
    store = _option(args, STORE_OPTIONS)
    if store is None:
        config = _option(args, CONFIG_OPTIONS)
        store = None if config is None else _config_store(workdir / config)
    return None if store is None else workdir / store


def _option(args: Sequence[str], names: Sequence[str]) -> str | None:
    """The value after the last of ``names`` in ``args`` (the one that wins)."""
    found = None
    for flag, value in itertools.pairwise(args):
        if flag in names:
            found = value
    return found


def _config_store(path: Path) -> str | None:
    try:
        with path.open("rb") as config:
            text = config.read(MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
        return property_values(text).get("model_store") or None
    except (OSError, ConfigError):
        return None

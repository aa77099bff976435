"""How much of an untrusted file the toolkit reads: config files are small, so a bound costs
nothing and keeps a hostile or mistaken file (a weights file passed as a config) cheap."""

from __future__ import annotations

from pathlib import Path

from servekit.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # config.properties, model-config.yml, specs: a few KB in practice


def read_capped(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of ``path``; ``ConfigError`` when it is larger than ``limit`` or unreadable."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(data) > limit:
        raise ConfigError(
            f"{path}: larger than {limit} bytes; a config file is a few KB (the right file?)"
        )
    return data


def is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False, not an exception, for names no file can have
    (a NUL byte, a name too long for the file system)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False

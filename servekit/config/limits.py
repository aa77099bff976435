"""How much of an untrusted file the toolkit reads: config files are small, so a bound costs
nothing and keeps a hostile or mistaken file (a weights file passed as a config) cheap."""

from __future__ import annotations

import errno
import math
import os
import stat
from pathlib import Path

from servekit.errors import ConfigError
from servekit.runtime.decoding import MAX_INT_DIGITS

MAX_CONFIG_BYTES = 1 << 20  # config.properties, model-config.yml, specs: a few KB in practice
# The largest integer a config may hold: any int of at most this many bits prints in at most
# MAX_INT_DIGITS digits, so str() never raises (14,284 bits, 4,300 digits).
MAX_INT_BITS = math.floor(MAX_INT_DIGITS * math.log2(10))


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
    return not_a_file(path) is None


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file a tool can read (``None`` when it is one), said as
    what it is: "no such file", "a directory", "a named pipe (FIFO)", "a character device"..."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a device
    except ValueError:
        return "not a valid file name (a NUL byte)"
    except OSError as err:
        reasons = {
            errno.ENOENT: "no such file",
            errno.ENAMETOOLONG: "a file name too long for the file system",
            errno.ELOOP: "a symbolic link loop",
            errno.ENOTDIR: "no such file (a parent is not a directory)",
        }
        return reasons.get(err.errno or 0, f"cannot be read: {err.strerror or err}")
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file"

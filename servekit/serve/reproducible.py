"""Make a ``.mar`` byte-identical for identical inputs.

``torch-model-archiver`` writes the build time into ``MAR-INF/MANIFEST.json``
(``createdOn``) and each file's mtime and mode into the zip, in directory-walk
order. ``normalize_mar`` rewrites the zip with entries sorted by name, a fixed
timestamp, fixed permissions and a fixed ``createdOn``, so the same inputs give
the same bytes on any machine, at any time, from any temporary directory.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

MANIFEST = "MAR-INF/MANIFEST.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
CREATED_ON = "01/01/1980 00:00:00"  # the archiver's format: dd/MM/yyyy HH:mm:ss
FILE_MODE = 0o100644
PUBLIC_MODE = 0o644  # on disk: the images copy archives as root and serve them as uid 1000
_CREATED_ON = re.compile(rb'("createdOn"\s*:\s*)"[^"]*"')


def normalize_mar(path: Path) -> None:
    """Rewrite the zip at ``path`` in canonical form (atomically: a crash leaves the old file)."""
    with zipfile.ZipFile(path) as source:
        entries = sorted(
            (info.filename, source.read(info)) for info in source.infolist() if not info.is_dir()
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as target:
            for name, data in entries:
                target.writestr(_entry(name), _canonical(name, data))
        os.chmod(tmp, PUBLIC_MODE)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_public(path: Path, text: str) -> None:
    """Write ``path`` atomically, mode 0644 whatever the umask (a side file of an archive)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, PUBLIC_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_public(path: Path) -> None:
    """Give an existing file mode 0644 (archives built before modes were fixed were 0600)."""
    if path.stat().st_mode & 0o777 != PUBLIC_MODE:
        os.chmod(path, PUBLIC_MODE)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = FILE_MODE << 16
    info.create_system = 3  # Unix, whatever the building OS
    return info


def _canonical(name: str, data: bytes) -> bytes:
    if name != MANIFEST:
        return data
    return _CREATED_ON.sub(rb'\1"' + CREATED_ON.encode() + rb'"', data, count=1)

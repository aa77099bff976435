"""What may stand where scaffolding writes a file: nothing, or a regular file. A link (it would
write elsewhere), a directory or a device where a file goes, and anything but a directory where
a directory goes, are the user's to move: ``init`` and ``new-model`` refuse them, ``--force``
or not."""

from __future__ import annotations

from pathlib import Path


def in_the_way(root: Path, rel: str) -> str | None:
    """Why ``root/rel`` cannot be written as a regular file, or ``None`` when it can."""
    target = root / rel
    parts = Path(rel).parts
    for depth in range(1, len(parts)):
        parent = root.joinpath(*parts[:depth])
        if parent.is_symlink():
            return f"{parent} is a link: writing through it would write outside the project"
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file where a directory must go"
    if target.is_symlink():
        return f"{target} is a link: writing through it would write outside the project"
    if target.exists() and not target.is_file():
        return f"{target} is not a regular file"
    return None

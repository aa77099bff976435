"""``servekit init DIR``: a new, working project in a new or empty directory.

    servekit init my-models          # creates my-models/ (and its parents)
    servekit init . --force          # a directory with files: adds what is missing, keeps the rest

The project: ``config.properties`` (loopback only, model API off, every archive in
``model_store/`` served), ``model-config.yml``, ``config/log4j2.xml``, ``handlers/``,
``model_store/``, ``tests/`` (the ``server`` and ``project_root`` fixtures), ``pytest.ini``,
``requirements.txt`` (this servekit, pinned), a ``Makefile``, a ``.gitignore`` and a README.
Everything is written into a hidden temporary directory in DIR first, then moved into place:
a failure (disk full, permissions) leaves DIR as it was (and removes it if init created it).
Existing files are never overwritten. Exit codes: 0 made, 2 usage or bad input (nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import servekit
from servekit.errors import ConfigError, os_error_text
from servekit.scaffold.paths import in_the_way

TEMPLATE = ("templates", "project")
# setuptools leaves dotfiles out of package data: they are stored without the dot
RENAMED = {"gitignore": ".gitignore", "gitkeep": ".gitkeep"}
NEXT_STEPS = (
    "servekit new-model NAME --kind KIND --weights FILE   # servekit new-model --help: the kinds",
    "make serve",
)


@dataclasses.dataclass(frozen=True)
class Made:
    """What ``init`` did: the files it wrote and the ones it found and kept (``--force``)."""

    root: Path
    written: list[str]
    kept: list[str]


def distribution() -> str:
    """The name this toolkit is installed under (``pip install NAME``), from its metadata."""
    names = importlib.metadata.packages_distributions().get(servekit.__name__, [])
    if not names:
        raise ConfigError(
            f"cannot find the distribution that installs {servekit.__name__}: install it with "
            "pip (pip install .) before servekit init"
        )
    return names[0]


def pytest_requirement(dist: str) -> str:
    """The pytest this toolkit's ``dev`` extra pins (``pytest==X``), else ``pytest``."""
    for requirement in importlib.metadata.requires(dist) or []:
        spec = requirement.split(";", 1)[0].strip()
        if spec.startswith("pytest=="):
            return spec
    return "pytest"


def placeholders(root: Path) -> dict[str, str]:
    dist = distribution()
    return {
        "@NAME@": root.name,
        "@DISTRIBUTION@": dist,
        "@VERSION@": servekit.__version__,
        "@PYTEST@": pytest_requirement(dist),
    }


def project_files(root: Path) -> dict[str, bytes]:
    """Every file of a new project at ``root``: its path relative to ``root`` -> its bytes."""
    values = placeholders(root)
    template = files("servekit.scaffold").joinpath(*TEMPLATE)
    made: dict[str, bytes] = {}
    for relative, source in _walk(template, ()):
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        made["/".join(relative)] = text.encode()
    return made


def _walk(
    node: Traversable, parts: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__" or child.name.endswith((".pyc", ".pyo")):
            continue
        if child.is_dir():
            yield from _walk(child, (*parts, child.name))
        else:
            yield (*parts, RENAMED.get(child.name, child.name)), child


def init(target: Path, force: bool = False) -> Made:
    """Write a new project into ``target`` (created with its parents when missing).

    ``ConfigError`` when ``target`` is a file, or a directory with entries and not ``force``;
    with ``force`` existing files are kept. Nothing is left behind when writing fails."""
    root = Path(os.path.abspath(target))
    existing = _entries(root)
    if existing and not force:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise ConfigError(
            f"{target} is not empty ({len(existing)} entries: {shown}): servekit init writes "
            "into a new or empty directory; pass --force to add the missing files there "
            "(existing files are kept)"
        )
    wanted = project_files(root)
    kept = sorted(name for name in wanted if _occupied(root, name))
    written = {name: data for name, data in wanted.items() if name not in kept}
    try:
        _write(root, written)
    except OSError as err:
        raise ConfigError(
            f"cannot write the project into {target}: {os_error_text(err)}; nothing was "
            "written (init removed the files and directories it had made)"
        ) from err
    return Made(root, sorted(written), kept)


def _entries(root: Path) -> list[str]:
    """The names in ``root`` (none when it does not exist); ``ConfigError`` unless a directory."""
    if root.is_dir():
        return sorted(os.listdir(root))
    if root.exists() or root.is_symlink():
        raise ConfigError(f"{root} is a file, not a directory: give a new or empty directory")
    return []


def _occupied(root: Path, name: str) -> bool:
    """A regular file is at ``name`` (kept); ``ConfigError`` when something else is in the way
    (a link, a directory, a file where the project needs a directory)."""
    why = in_the_way(root, name)
    if why is not None:
        raise ConfigError(f"{why}: move it away, or init into another directory")
    return (root / name).exists()


def _write(root: Path, written: dict[str, bytes]) -> None:
    """Write ``written`` into a hidden temporary directory in ``root``, then move it into
    place; on any failure remove what was made (``root`` too if this created it) and raise."""
    created: list[Path] = []
    try:
        created += _make_dirs(root)[:1]  # the outermost directory made holds everything else
        stage = Path(tempfile.mkdtemp(prefix=".servekit-init-", dir=root))
        created.append(stage)
        for name, data in written.items():
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _move_into(stage, root, created)
        shutil.rmtree(stage)
    except BaseException:
        for path in reversed(created):
            _remove(path)
        raise


def _make_dirs(root: Path) -> list[Path]:
    """Create ``root`` and its missing parents; the ones created, outermost first."""
    missing = [p for p in (root, *root.parents) if not p.exists()][::-1]
    for path in missing:
        path.mkdir()
    return missing


def _move_into(source: Path, destination: Path, moved: list[Path]) -> None:
    """Move what ``source`` holds into ``destination``, entering directories both have."""
    for entry in sorted(source.iterdir()):
        target = destination / entry.name
        if entry.is_dir() and target.is_dir():
            _move_into(entry, target, moved)
        else:
            os.rename(entry, target)
            moved.append(target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit init",
        description="Create a new, working project in DIR: config.properties (secure "
        "defaults), model-config.yml, config/, handlers/, model_store/, tests/, a Makefile, "
        "requirements.txt, .gitignore and a README. Exit codes: 0 made, 2 usage or bad input "
        "(nothing written).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a new or empty directory ('.')")
    parser.add_argument(
        "--force",
        action="store_true",
        help="also into a directory that has files: add the missing ones, keep the rest",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    made = init(args.dir, force=args.force)
    shown = args.dir if str(args.dir) != "." else Path.cwd().name
    print(f"Created a servekit project in {shown}/:")
    for name in made.written:
        print(f"  {name}")
    if made.kept:
        print(f"Kept (already there, not overwritten): {', '.join(made.kept)}")
    print("\nNext:")
    if str(args.dir) != ".":
        print(f"  cd {args.dir}")
    for step in NEXT_STEPS:
        print(f"  {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every bench subcommand shares: its parser, its project, its archive, its record.

Errors are not caught here: a ``ToolkitError`` goes up to ``servekit.cli``, the one place
that turns it into one line on stderr and an exit code (2 bad input, 3 unreachable, 1 else).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from servekit import project as projects
from servekit.errors import ConfigError
from servekit.project import Project


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """``servekit <name>``'s parser: its docstring's first paragraph and ``--project``."""
    built = argparse.ArgumentParser(
        prog=f"servekit {name}",
        description=(doc or "").split("\n\n")[0],
        epilog="exit codes: 0 ok, 1 the run failed, 2 usage or bad input, 3 unreachable",
    )
    projects.add_argument(built)
    return built


def add_payload_arguments(parser: argparse.ArgumentParser) -> None:
    """``--payload FILE`` and ``--content-type``: the requests' bodies, as every command that
    sends a model requests takes them (bench, tune, limit, profile)."""
    parser.add_argument(
        "--payload",
        type=Path,
        help="body file (.jsonl: one body a line); default: the model's built-in payload",
    )
    parser.add_argument("--content-type", help="Content-Type (default: from payload)")


def project_of(args: argparse.Namespace) -> Project:
    """The project of ``--project`` or the current directory (``NotAProject`` if none)."""
    return projects.from_args(args)


def archive_of(project: Project, model: str) -> Path:
    """``model_store/<model>.mar`` of the project; a ``ConfigError`` saying how to build it."""
    path = project.archive(model)
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist; build it with `servekit archive {model}` "
            f"(project {project.root})"
        )
    return path


def line(name: str, argv: Sequence[str] | None) -> str:
    """The command as a results file records it: ``servekit <name> <args>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["servekit", name, *args])

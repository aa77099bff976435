"""What every bench subcommand shares: its parser, its project, its exit codes.

Exit codes as everywhere in ``servekit``: 0 ok, 1 the run failed (or, for ``tune``, no
setting met the objective), 2 usage or bad input (a missing project or archive included),
3 a management API gave no answer.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from servekit import project as projects
from servekit.errors import ConfigError, ToolkitError
from servekit.project import Project
from servekit.serve.management import ManagementUnreachable

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """``servekit <name>``'s parser: its docstring's first paragraph and ``--project``."""
    summary = (doc or "").split("\n\n")[0]
    built = argparse.ArgumentParser(
        prog=f"servekit {name}",
        description=summary,
        epilog="exit codes: 0 ok, 1 the run failed, 2 usage or bad input, 3 unreachable",
    )
    projects.add_argument(built)
    return built


def project_of(built: argparse.ArgumentParser, args: argparse.Namespace) -> Project:
    """The project of ``--project`` or the current directory; exit 2 with the reason if none."""
    try:
        return projects.from_args(args)
    except ConfigError as err:
        built.exit(USAGE, f"{built.prog}: {err}\n")


def archive_of(project: Project, model: str) -> Path:
    """``model_store/<model>.mar`` of the project; a ``ConfigError`` saying how to build it."""
    path = project.archive(model)
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist; build it with `servekit archive {model}` "
            f"(project {project.root})"
        )
    return path


def exit_code(err: ToolkitError) -> int:
    if isinstance(err, ManagementUnreachable):
        return UNREACHABLE
    if isinstance(err, ConfigError):
        return USAGE
    return FAILED


def fail(prog: str, err: ToolkitError) -> int:
    """Say what went wrong on stderr (no traceback) and return its exit code."""
    print(f"{prog}: {err}", file=sys.stderr)
    return exit_code(err)


def line(name: str, argv: Sequence[str] | None) -> str:
    """The command as a results file records it: ``servekit <name> <args>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["servekit", name, *args])

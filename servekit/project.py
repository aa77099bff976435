"""The project a command works on: a directory with ``config.properties``, ``model-config.yml``,
``config/<model>.yml`` specs, ``handlers/`` and ``model_store/``.

Every ``servekit`` command takes it from ``--project DIR``, else the current directory; nothing
is found from where servekit itself is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
from pathlib import Path

from servekit.errors import ConfigError

PROPERTIES = "config.properties"
MODEL_CONFIG = "model-config.yml"


class NotAProject(ConfigError):
    """The directory is not a servekit project (no ``config.properties``)."""


@dataclasses.dataclass(frozen=True)
class Project:
    root: Path

    @property
    def properties(self) -> Path:
        return self.root / PROPERTIES

    @property
    def model_config(self) -> Path:
        return self.root / MODEL_CONFIG

    @property
    def specs_dir(self) -> Path:
        return self.root / "config"

    @property
    def handlers(self) -> Path:
        return self.root / "handlers"

    @property
    def model_store(self) -> Path:
        return self.root / "model_store"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def spec(self, model: str) -> Path:
        """``config/<model>.yml``."""
        return self.specs_dir / f"{model}.yml"

    def specs(self) -> list[Path]:
        """Every model spec, by name."""
        return sorted(self.specs_dir.glob("*.yml"))

    def archive(self, model: str) -> Path:
        """``model_store/<model>.mar``."""
        return self.model_store / f"{model}.mar"

    def check(self) -> Project:
        """``NotAProject`` naming the directory and what is wrong, unless it holds a project
        whose ``config.properties`` can be read."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            raise NotAProject(f"project directory {self.root} does not exist") from None
        except NotADirectoryError:
            raise NotAProject(
                f"{self.root} is a file, not a directory: pass the project directory to --project"
            ) from None
        except OSError as err:  # PermissionError above all: chmod, another user's directory
            raise NotAProject(
                f"project directory {self.root} cannot be read: {err.strerror or err}; "
                "check its permissions"
            ) from None
        if PROPERTIES not in names:
            raise NotAProject(
                f"{self.root} is not a servekit project (no {PROPERTIES}): run servekit in a "
                "project directory or pass --project DIR"
            )
        try:
            if not stat.S_ISREG(os.stat(self.properties).st_mode):
                raise NotAProject(f"{self.properties} is not a regular file")
            with self.properties.open("rb"):  # a regular file: opening it cannot block
                pass
        except OSError as err:
            raise NotAProject(
                f"{self.properties} cannot be read: {err.strerror or err}; check its permissions"
            ) from None
        return self


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--project DIR`` (default: the current directory)."""
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        metavar="DIR",
        help="the project directory (default: the current directory)",
    )


def from_args(args: argparse.Namespace, check: bool = True) -> Project:
    """The project named by ``--project``, else the current directory (absolute)."""
    root = getattr(args, "project", None) or Path.cwd()
    project = Project(Path(root).absolute())
    return project.check() if check else project

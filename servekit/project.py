"""The project a command works on: a directory with ``config.properties``, ``model-config.yml``,
``config/<model>.yml`` specs, ``handlers/`` and ``model_store/``.

Every ``servekit`` command takes it from ``--project DIR``, else the current directory; nothing
is found from where servekit itself is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
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
        """``NotAProject`` naming the directory and what to do, unless it holds a project."""
        if not self.root.is_dir():
            raise NotAProject(f"project directory {self.root} does not exist")
        if not self.properties.is_file():
            raise NotAProject(
                f"{self.root} is not a servekit project (no {PROPERTIES}): run servekit in a "
                "project directory or pass --project DIR"
            )
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

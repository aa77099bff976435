"""The package's layout is its architecture: imports point one way between concerns.

runtime (inside every .mar) <- config <- serve <- health, queue <- bench; serve <- scaffold;
health <- observe <- bench (bench-observe measures it);
``servekit.errors`` and ``servekit.datasets`` are shared leaves. Nothing in the package imports
the tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent.parent / "servekit"
SHARED = {"servekit", "servekit.errors", "servekit.datasets", "servekit.project"}
ALLOWED = {
    "runtime": {"runtime"},
    "config": {"runtime", "config"},
    "serve": {"runtime", "config", "serve"},
    "health": {"runtime", "config", "serve", "health"},
    "observe": {"runtime", "config", "serve", "health", "observe"},
    "ops": {"runtime", "config", "serve", "health", "ops"},
    "queue": {"runtime", "config", "serve", "queue"},
    "bench": {"runtime", "config", "serve", "health", "observe", "ops", "queue", "bench"},
    "scaffold": {"runtime", "config", "serve", "scaffold"},
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = sorted(p for c in ALLOWED for p in (PACKAGE / c).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    concern = path.relative_to(PACKAGE).parts[0]
    wrong = []
    for name in imported(path):
        parts = name.split(".")
        if parts[0] in ("tests", "handlers") or (
            parts[0] == "servekit"
            and name not in SHARED
            and len(parts) > 1
            and parts[1] in ALLOWED
            and parts[1] not in ALLOWED[concern]
        ):
            wrong.append(name)
    assert not wrong, f"servekit/{concern} must not import {sorted(wrong)}"


def test_every_module_belongs_to_a_concern() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__.py", "errors.py", "datasets.py", "project.py", "cli.py"}, top

"""Check a model's ``handler:`` options against what its handler declares.

A toolkit handler declares its options as a frozen dataclass, ``options_class``
(see ``servekit/runtime/options.py``); TorchServe loads the only class a handler file
defines. ``declared_options`` finds the options by reading the handler's source
(``servekit.config.handler_source``), or, only when asked to (``import_handlers``), by
importing the handler, which runs its code. ``check_options`` reports undeclared,
mistyped and out-of-range options as findings.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from servekit.config.findings import ERROR, Finding, did_you_mean, show
from servekit.config.handler_source import static_options
from servekit.errors import ConfigError
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions

Where = Callable[[str], tuple[str, int | None]]


def declared_options(
    handler: Path, root: Path, import_handlers: bool = False
) -> type[HandlerOptions] | None:
    """The handler's options: read from its source, or imported when ``import_handlers``.

    ``ConfigError`` names what is wrong with the file; its subclass ``Unresolved`` means
    only importing would tell.
    """
    if not import_handlers:
        return static_options(handler, root)
    try:
        return options_class(handler_class(handler, root))
    except ConfigError:
        raise
    except (Exception, SystemExit) as err:  # user code can raise anything, even exit
        raise ConfigError(f"{handler}: cannot import: {type(err).__name__}: {err}") from None


def handler_class(handler: Path, root: Path) -> type:
    """The one class defined in ``handler`` (a file under ``root``), as TorchServe picks it."""
    module = _import(handler.resolve(), root.resolve())
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise ConfigError(
            f"{handler}: TorchServe needs exactly one class in a handler file, found {names}; "
            "move helper classes to their own module"
        )
    return classes[0]


def options_class(handler: type) -> type[HandlerOptions] | None:
    """The handler's declared options, or ``None`` for a handler that declares none.

    Checked by shape, not identity: a process that also ran handlers from an extracted
    archive (the harness, TorchServe's loader) may hold a second copy of ``handlers``.
    """
    declared = getattr(handler, "options_class", None)
    if isinstance(declared, type) and all(
        callable(getattr(declared, name, None)) for name in ("from_section", "declared")
    ):
        return cast("type[HandlerOptions]", declared)
    return None


def check_options(
    options: type[HandlerOptions], section: Mapping[str, Any], where: Where, owner: str
) -> list[Finding]:
    """Undeclared options (with "did you mean"), then type and range of the declared ones."""
    declared = options.declared()
    expected = ", ".join(f"{k} ({t})" for k, t in declared.items())
    findings = []
    known: dict[str, Any] = {}
    for name, value in section.items():
        if name in declared:
            known[name] = value
            continue
        file, line = where(name)
        close = did_you_mean(str(name), declared)
        fix = f"did you mean '{close}'?" if close else f"remove it; {owner} declares: {expected}"
        findings.append(
            Finding(
                severity=ERROR,
                code="undeclared-option",
                file=file,
                line=line,
                key=f"handler.{name}",
                value=show(value),
                expected=f"an option {owner} declares",
                fix=fix,
                problem=f"{owner} does not declare this option: initialize fails",
            )
        )
    try:
        options.from_section(known)
    except Exception as err:  # ModelLoadError (maybe a second copy's), or an imported bug
        why = str(err) if _is_load_error(err) else f"{type(err).__name__}: {err}"
        culprit = _named(why, known)
        file, line = where(culprit or "")
        findings.append(
            Finding(
                severity=ERROR,
                code="bad-option",
                file=file,
                line=line,
                key=f"handler.{culprit or '?'}",
                value=show(known.get(culprit)) if culprit else "",
                expected=f"options as {owner} declares them ({expected})",
                fix="fix the value as the message says",
                problem=f"initialize would fail: {why}",
            )
        )
    return findings


def _is_load_error(err: Exception) -> bool:
    return isinstance(err, ModelLoadError) or any(
        kind.__name__ == ModelLoadError.__name__ for kind in type(err).__mro__
    )


def _named(message: str, known: Mapping[str, Any]) -> str | None:
    for name in known:
        if f"'{name}'" in message:
            return str(name)
    return None


def _import(path: Path, root: Path) -> ModuleType:
    """The handler's module, with the project's ``handlers`` package importable (as in every
    archive): ``handlers.<name>`` for a file of it, else the file alone. ``sys.path`` is left
    as it is."""
    if (root / "handlers").is_dir():
        _project_handlers(root)
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = None
    if relative is not None and relative.parts[0] == "handlers" and len(relative.parts) == 2:
        return importlib.import_module(f"handlers.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"_handler_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _project_handlers(root: Path) -> None:
    """Import ``root/handlers`` as the package ``handlers``, found there, not on ``sys.path``."""
    package = root / "handlers"
    loaded = sys.modules.get("handlers")
    if loaded is not None:
        if any(Path(p).resolve() == package for p in getattr(loaded, "__path__", [])):
            return
        raise ConfigError(
            f"{package}: another 'handlers' package is already imported in this process "
            f"({list(getattr(loaded, '__path__', []))}); validate each project on its own"
        )
    spec = importlib.machinery.PathFinder.find_spec("handlers", [str(root)])
    if spec is None:
        raise ConfigError(f"{package}: not an importable Python package")
    module = importlib.util.module_from_spec(spec)  # a namespace package gets its loader here
    sys.modules["handlers"] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["handlers"]
        raise

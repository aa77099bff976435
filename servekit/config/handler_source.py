"""Find a handler's class and its declared options by reading its source, never running it.

Validating someone else's spec must not run their code. ``static_options`` parses the
handler file with ``ast``: the one class TorchServe would load, its ``options_class``
(declared in the class or inherited from a base defined in a readable file), and that
options dataclass's fields, types and literal defaults. Options modules byte-identical to
the toolkit's own ``handlers`` package are the validator's own code and are imported, so
their range checks (``check``) run too; any other options class is rebuilt from its fields
on top of the toolkit's ``HandlerOptions`` (types and names are checked, its own ``check``
is not). What cannot be read this way raises ``Unresolved``; ``--import-handlers`` imports
the handler instead (which runs it).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import importlib
import importlib.machinery
import os
import stat
import warnings
from pathlib import Path
from typing import Any, cast

import servekit.runtime
from servekit.config.limits import MAX_INT_BITS, is_file, read_capped
from servekit.errors import ConfigError
from servekit.runtime.decoding import cut
from servekit.runtime.options import HandlerOptions

MAX_HOPS = 8  # base classes and imports followed from the handler file
_TYPES: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str, "None": None}
_TOOLKIT = Path(str(servekit.runtime.__file__)).parent  # the installed handler runtime
_INSTALLED = _TOOLKIT.parent.parent  # where `servekit` is importable from


class Unresolved(ConfigError):
    """The handler's options cannot be known without running its code."""


@dataclasses.dataclass(frozen=True)
class _Module:
    path: Path
    tree: ast.Module

    def classes(self) -> list[ast.ClassDef]:
        """Classes defined at module level (also under if/try), as TorchServe lists them."""
        found: list[ast.ClassDef] = []
        pending: list[ast.stmt] = list(self.tree.body)
        while pending:
            node = pending.pop(0)
            if isinstance(node, ast.ClassDef):
                found.append(node)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                pending += [
                    s for f in ("body", "orelse", "finalbody") for s in getattr(node, f, [])
                ]
                pending += [s for h in getattr(node, "handlers", []) for s in h.body]
        return found

    def origin(self, name: str, root: Path) -> tuple[Path, str] | None:
        """The file and class name that ``name`` refers to: a class here or an import."""
        if any(c.name == name for c in self.classes()):
            return self.path, name
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        source = self._module_file(node, root)
                        return (source, alias.name) if source is not None else None
        return None

    def _module_file(self, node: ast.ImportFrom, root: Path) -> Path | None:
        parts = (node.module or "").split(".")
        if node.level:  # relative: from the handler's own package
            base = (
                self.path.parents[node.level - 1] if node.level <= len(self.path.parents) else None
            )
            candidates = [base.joinpath(*parts).with_suffix(".py")] if base and parts[0] else []
        else:  # the project's package (root/handlers/...), a sibling file (the model dir) or
            # the installed handler runtime (servekit.runtime, archived with every model)
            candidates = [
                root.joinpath(*parts).with_suffix(".py"),
                self.path.parent.joinpath(*parts).with_suffix(".py"),
            ]
            if parts[:2] == ["servekit", "runtime"]:
                candidates.append(_INSTALLED.joinpath(*parts).with_suffix(".py"))
        return next((c for c in candidates if is_file(c)), None)


def parse(path: Path) -> _Module:
    """The module's syntax tree; ``ConfigError`` when it is not a readable Python file."""
    try:
        source = read_capped(path).decode("utf-8")
        with warnings.catch_warnings():  # "invalid escape sequence" and the like: not ours
            warnings.simplefilter("ignore")
            return _Module(path, ast.parse(source, str(path)))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 Python source ({err.reason})") from None
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        why = "nested too deeply" if isinstance(err, (RecursionError, MemoryError)) else err
        raise ConfigError(f"{path}: not valid Python: {why}") from None


def handler_class_node(module: _Module) -> ast.ClassDef:
    """The one class of a handler file; ``ConfigError`` when there is not exactly one."""
    classes = module.classes()
    if len(classes) != 1:
        names = ", ".join(c.name for c in classes) or "none"
        raise ConfigError(
            f"{module.path}: TorchServe needs exactly one class in a handler file, found "
            f"{names}; move helper classes to their own module"
        )
    return classes[0]


def static_options(handler: Path, root: Path) -> type[HandlerOptions] | None:
    """The options the handler declares (``None``: it declares none), read without running it.

    ``ConfigError`` when the file is not one Python class; ``Unresolved`` when its options
    are declared in a way only running it would tell.
    """
    module = parse(handler)
    return _handler_options(module, handler_class_node(module), root, MAX_HOPS)


def _handler_options(
    module: _Module, node: ast.ClassDef, root: Path, hops: int
) -> type[HandlerOptions] | None:
    if hops <= 0:
        raise Unresolved(f"{module.path}: more than {MAX_HOPS} base classes and imports deep")
    for statement in node.body:
        value = _assigned(statement, "options_class")
        if value is not None:
            if not isinstance(value, ast.Name):
                raise Unresolved(f"{module.path}: options_class is not a plain class name")
            return _options_class(module, value.id, root, hops - 1)
    for base in node.bases:
        name = _base_name(base)
        origin = module.origin(name, root) if name else None
        if origin is None:
            continue  # a class from outside the project (TorchServe's BaseHandler, object)
        base_module = module if origin[0] == module.path else parse(origin[0])
        found = [c for c in base_module.classes() if c.name == origin[1]]
        if found:
            declared = _handler_options(base_module, found[0], root, hops - 1)
            if declared is not None:
                return declared
    return None


def _options_class(module: _Module, name: str, root: Path, hops: int) -> type[HandlerOptions]:
    if name == HandlerOptions.__name__:
        return HandlerOptions
    origin = module.origin(name, root)
    if origin is None:
        raise Unresolved(f"{module.path}: cannot tell where options_class {name} comes from")
    path, class_name = origin
    trusted = _toolkit_module(path)
    if trusted is not None:
        declared = getattr(importlib.import_module(trusted), class_name, None)
        # the base as that module sees it: once `handlers` is imported anew (the harness
        # forgets an archive's copy), the class imported above is another object
        base = importlib.import_module(HandlerOptions.__module__).HandlerOptions
        if isinstance(declared, type) and issubclass(declared, base):
            return cast("type[HandlerOptions]", declared)
        raise Unresolved(f"{path}: {class_name} is not a HandlerOptions dataclass")
    source = module if path == module.path else parse(path)
    found = [c for c in source.classes() if c.name == class_name]
    if not found or hops <= 0:
        raise Unresolved(f"{path}: no class {class_name} to read")
    return _rebuild(source, found[0], root, hops - 1)


def _toolkit_module(path: Path) -> str | None:
    """``servekit.runtime.<name>`` when ``path`` holds exactly the runtime's module of that name."""
    own = _TOOLKIT / path.name
    try:
        same = own != path and is_file(own) and own.read_bytes() == read_capped(path)
    except ConfigError:
        return None
    return f"servekit.runtime.{path.stem}" if same or own == path.resolve() else None


def _rebuild(module: _Module, node: ast.ClassDef, root: Path, hops: int) -> type[HandlerOptions]:
    """An options dataclass with the fields of ``node``, on top of its (rebuilt) base."""
    names = [_base_name(b) for b in node.bases]
    if len(names) != 1 or not names[0]:
        raise Unresolved(f"{module.path}: {node.name} does not derive from one options class")
    base = _options_class(module, str(names[0]), root, hops)
    fields = [_field(module, node, s) for s in node.body if isinstance(s, ast.AnnAssign)]
    declared = [f for f in fields if f is not None]
    taken = {n for n in dir(base) if n not in {f.name for f in dataclasses.fields(base)}}
    if any(name in taken for name, _, _ in declared):
        raise Unresolved(f"{module.path}: {node.name} has a field named like a method")
    try:
        rebuilt = dataclasses.make_dataclass(node.name, declared, bases=(base,), frozen=True)
    except (TypeError, ValueError) as err:  # a mutable default, a field without a default
        raise Unresolved(f"{module.path}: {node.name}: {err}") from None
    return cast("type[HandlerOptions]", rebuilt)


def _field(
    module: _Module, node: ast.ClassDef, statement: ast.AnnAssign
) -> tuple[str, Any, Any] | None:
    if not isinstance(statement.target, ast.Name):
        return None
    name = statement.target.id
    try:  # an annotation int|int|... 1,000 deep, or "-" * 3000 in a string, is too deep
        kind = _annotation(statement.annotation)
    except (RecursionError, MemoryError):
        kind = None
    if kind is _CLASSVAR:
        return None
    if kind is None or statement.value is None:
        raise Unresolved(
            f"{module.path}: {node.name}.{name}: a type or default only running the code would tell"
        )
    try:
        default = ast.literal_eval(statement.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        default = _NOT_LITERAL
    if default is _NOT_LITERAL or not _bounded(default):
        raise Unresolved(
            f"{module.path}: {node.name}.{name}: the default is not a literal of bounded size"
        )
    return name, kind, dataclasses.field(default=default)


_NOT_LITERAL = object()


def _bounded(value: Any) -> bool:
    """No int in ``value`` too large to print (0x followed by 4,000 f is a literal)."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_bounded(v) for v in value)
    if isinstance(value, dict):
        return all(_bounded(k) and _bounded(v) for k, v in value.items())
    return not isinstance(value, int) or value.bit_length() <= MAX_INT_BITS


_CLASSVAR = object()


def _annotation(node: ast.expr) -> Any:
    """The type an annotation names, from a small set; ``None`` when it is anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            inner = ast.parse(node.value, mode="eval").body
        except (SyntaxError, ValueError):  # ValueError: a NUL byte in the string
            return None
        return _annotation(inner)
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Name):
        found = _TYPES.get(node.id, ...)
        return type(None) if found is None else (None if found is ... else found)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation(node.left), _annotation(node.right)
        return None if left in (None, _CLASSVAR) or right in (None, _CLASSVAR) else left | right
    if isinstance(node, ast.Subscript) and _base_name(node.value) == "ClassVar":
        return _CLASSVAR
    if isinstance(node, ast.Subscript) and _base_name(node.value) == "tuple":
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else []
        item = _annotation(items[0]) if len(items) == 2 else None
        ellipsis = len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is ...
        return tuple[item, ...] if item in (bool, int, float, str) and ellipsis else None  # type: ignore[valid-type]
    return None


def _assigned(statement: ast.stmt, name: str) -> ast.expr | None:
    if isinstance(statement, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == name for t in statement.targets
    ):
        return statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.value if statement.target.id == name else None
    return None


def _base_name(node: ast.expr) -> str | None:
    """``Base`` of ``Base``, ``Base[T]`` or ``module.Base``."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


# ----- imports the archive cannot satisfy ---------------------------------------------------
PACKAGE = "handlers"  # the project's handler package, archived next to servekit.runtime
_SHIPPED = ("servekit", "runtime")  # the only part of servekit an archive holds


@dataclasses.dataclass(frozen=True)
class BadImport:
    """One import of a handler (or a module of ``handlers`` it imports) that fails in a worker."""

    path: Path
    line: int
    statement: str
    problem: str
    fix: str
    conditional: bool = False  # under if or in a function: runs only sometimes


def import_problems(handler: Path, root: Path) -> list[BadImport]:
    """Imports that fail once archived: relative ones in the handler file (TorchServe loads it
    as a top-level module), ``servekit`` outside ``servekit.runtime`` (not archived), and
    ``handlers.*`` modules that do not exist; the project's ``handlers.*`` modules the handler
    imports (and their packages' ``__init__.py``) are followed one level for the last two.
    An import under ``if`` or in a function runs only sometimes: ``BadImport.conditional``."""
    module = parse(handler)
    imports = _imports(module.tree)
    problems = [
        _relative(handler, root, node, conditional)
        for node, conditional in imports
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    followed: list[Path] = []
    for node, conditional in imports:
        for name in _absolute_names(node):
            problems += _absolute_problem(handler, root, node, name, conditional, followed)
    for path in dict.fromkeys(
        p for p in followed if p != handler and p.suffix == ".py" and is_file(p)
    ):
        try:
            tree = parse(path).tree
        except ConfigError:
            continue  # what is wrong in it shows when the worker imports it, with its reason
        for node, conditional in _imports(tree):
            for name in _absolute_names(node):
                problems += _absolute_problem(path, root, node, name, conditional, [])
    return sorted(problems, key=lambda p: p.conditional)  # errors first, in file order


_TYPING = ("typing", "typing_extensions")
_TRY = (ast.Try, getattr(ast, "TryStar", ast.Try))  # try/except* from Python 3.11 on
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements with whether they run only sometimes (under ``if``, ``match`` or in
    a function: True); none under ``if TYPE_CHECKING`` (also aliased) nor in a ``try`` that
    catches ImportError (a fallback the author planned)."""
    flags = _type_checking_names(tree)
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    pending: list[tuple[ast.AST, bool]] = [(tree, False)]
    while pending:
        node, conditional = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, conditional))
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test, flags):
            pending += [(s, conditional) for s in node.orelse]
            continue
        if isinstance(node, ast.If):
            pending += [(s, True) for s in (*node.body, *node.orelse)]
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Match)):
            pending += [(c, True) for c in ast.iter_child_nodes(node)]
            continue
        if isinstance(node, _TRY) and any(_catches_import_error(h) for h in node.handlers):
            pending += [(c, conditional) for c in (*node.orelse, *node.finalbody, *node.handlers)]
            continue
        pending += [(c, conditional) for c in ast.iter_child_nodes(node)]
    return sorted(found, key=lambda f: f[0].lineno)


def _type_checking_names(tree: ast.Module) -> set[str]:
    """Names ``TYPE_CHECKING`` goes by here: itself, ``from typing import TYPE_CHECKING as TC``."""
    names = {"TYPE_CHECKING"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in _TYPING:
            names |= {a.asname for a in node.names if a.name == "TYPE_CHECKING" and a.asname}
    return names


def _is_type_checking(test: ast.expr, names: set[str]) -> bool:
    if isinstance(test, ast.Name):
        return test.id in names
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {_base_name(k) for k in kinds if k is not None}
    return handler.type is None or bool(names & _IMPORT_ERRORS)


def _absolute_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted modules an absolute import needs (``a.b`` for ``from a.b import c``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    return [node.module]


def _servekit_problem(node: ast.Import | ast.ImportFrom, parts: list[str]) -> str | None:
    """The module of ``servekit`` outside ``servekit.runtime`` the import needs, if any: the
    archive holds servekit/__init__.py and servekit/runtime/."""
    if len(parts) > 1:
        return ".".join(parts) if parts[1] != _SHIPPED[1] else None
    if isinstance(node, ast.ImportFrom):  # from servekit import runtime, __version__, health
        for alias in node.names:
            own = _INSTALLED / _SHIPPED[0] / alias.name
            unshipped = alias.name != _SHIPPED[1] and (
                is_file(own.with_suffix(".py")) or _is_dir(own)
            )
            if unshipped:
                return f"{_SHIPPED[0]}.{alias.name}"
    return None


def _absolute_problem(
    path: Path,
    root: Path,
    node: ast.Import | ast.ImportFrom,
    name: str,
    conditional: bool,
    followed: list[Path],
) -> list[BadImport]:
    parts = name.split(".")
    statement, shown, file = _statement(node), cut(name, 120), cut("/".join(parts), 120)
    unshipped = _servekit_problem(node, parts) if parts[0] == _SHIPPED[0] else None
    if unshipped is not None:
        return [
            BadImport(
                path,
                node.lineno,
                statement,
                f"{cut(unshipped, 120)} is not in the archive: only servekit.runtime is shipped "
                "with a model",
                f"import it from servekit.runtime, or move what the handler needs into {PACKAGE}/",
                conditional,
            )
        ]
    if parts[0] != PACKAGE or not _is_dir(root / PACKAGE):
        return []
    found = _project_module(root, parts)
    if found is None:
        return [
            BadImport(
                path,
                node.lineno,
                statement,
                f"no module {shown} in the project ({file}.py)",
                f"add {file}.py or fix the import",
                conditional,
            )
        ]
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    followed += [root.joinpath(*parts[:n], "__init__.py") for n in range(1, len(parts))]
    followed.append(found)
    if isinstance(node, ast.ImportFrom):  # from handlers.pkg import module: follow it too
        followed += [
            sub
            for alias in node.names
            if (sub := _project_module(root, [*parts, alias.name])) is not None
        ]
    return []


def _project_module(root: Path, parts: list[str]) -> Path | None:
    """``root/a/b.py``, ``root/a/b/__init__.py`` or a compiled ``root/a/b.<tag>.so``; the
    directory of a namespace package."""
    base = root.joinpath(*parts)
    found = [c for c in (base.with_suffix(".py"), base / "__init__.py") if is_file(c)]
    if found:
        return found[0]
    if _is_dir(base):
        return base
    return next((c for c in _extensions(base) if is_file(c)), None)


def _extensions(base: Path) -> list[Path]:
    """Where an extension module ``base`` may be: this interpreter's suffixes, and any
    ``base.<tag>.so`` or ``.pyd`` (the workers' Python may be another version)."""
    named = [base.with_name(base.name + s) for s in importlib.machinery.EXTENSION_SUFFIXES]
    try:
        tagged = [
            p
            for pattern in (".*.so", ".*.pyd", ".so", ".pyd")
            for p in base.parent.glob(glob.escape(base.name) + pattern)
        ]
    except (OSError, ValueError):
        tagged = []
    return [*named, *tagged]


def _is_dir(path: Path) -> bool:
    """``Path.is_dir`` that answers False for a name too long for the file system."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _relative(handler: Path, root: Path, node: ast.ImportFrom, conditional: bool) -> BadImport:
    package = handler.parent.absolute()
    for _ in range(node.level - 1):
        package = package.parent
    try:
        prefix: list[str] | None = list(package.relative_to(root.absolute()).parts)
    except ValueError:
        prefix = None  # above the project root
    names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
    dots = "." * node.level
    if prefix is None:
        fix = f"{dots} is above the project: move what it imports into {PACKAGE}/, import it there"
    else:
        module = ".".join([*prefix, *([node.module] if node.module else [])])
        if not module:  # from .. import x in handlers/: x is a top-level module
            fix = f"write import {cut(names, 120)}"
        else:
            fix = f"write from {cut(module, 120)} import {cut(names, 120)}"
        if not prefix or prefix[0] != PACKAGE:
            fix += (
                f" ({dots} is {'/'.join(prefix) or 'the project root'}, outside {PACKAGE}/: only "
                f"{PACKAGE}/ and the spec's extra files are archived)"
            )
    return BadImport(
        handler,
        node.lineno,
        _statement(node),
        "a relative import: TorchServe loads the handler file as a top-level module "
        "(ImportError: attempted relative import with no known parent package)",
        fix,
        conditional,
    )


def _statement(node: ast.Import | ast.ImportFrom) -> str:
    return cut(ast.unparse(node), 120)

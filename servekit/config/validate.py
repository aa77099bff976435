"""Validate TorchServe config files before the server sees them (``servekit validate``).

TorchServe 0.12 ignores unknown keys, keeps defaults on wrong types with a log
line, and ships insecure defaults. ``validate_paths`` reads ``.properties``
files, ``model-config.yml`` files and model specs (``config/<model>.yml``) and
returns one ``Finding`` per problem, each naming file, line, key, value, what is
expected and a fix.

    servekit validate                        # the project: config.properties, model-config.yml,
                                             # config/*.yml (here, or --project DIR)
    servekit validate --json config.properties
    servekit validate --import-handlers config/iris.yml    # imports, so runs, the handler

A spec's handler file is read, never run: its options class is found in its source.
``--import-handlers`` imports the handler instead, which runs its code: use it only on
handlers you trust, for options declared in ways reading cannot follow (the validator then
warns ``options-unchecked``). Every file gets findings or a clean error, whatever it holds:
files over 1 MiB, YAML alias bombs and recursive aliases, nesting deeper than 64 levels, more
than 100,000 values, integers over 14,284 bits (4,300 digits; in any YAML form) and regexes too
costly to compile or match are reported, not loaded. A spec's paths are relative to the project.

Prints one line per finding: file, line, key, value, what is wrong, what is expected and the
fix. Exit codes: 0 no error (warnings allowed), 1 at least one error, 2 usage error.

    >>> findings = validate_paths([Path("config.properties")], Path("."))  # doctest: +SKIP
    >>> [f.text() for f in findings]                                      # doctest: +SKIP
    []
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from servekit.config import schema
from servekit.config.check_model_config import Where, check_effective, check_keys
from servekit.config.check_properties import check_properties
from servekit.config.findings import (
    ERROR,
    MAX_SHOWN,
    WARNING,
    Finding,
    did_you_mean,
    malformed,
    printable,
    show,
)
from servekit.config.handler_options import check_options, declared_options
from servekit.config.handler_source import Unresolved, import_problems
from servekit.config.limits import is_file, not_a_file, read_capped
from servekit.config.specs import HANDLER_IN_MODEL_CONFIG
from servekit.config.yamlpos import YamlDoc, YamlTooComplex, YamlTooLarge, load_yaml
from servekit.errors import ConfigError, ToolkitError
from servekit.project import Project, add_argument, from_args
from servekit.runtime.options import HandlerOptions

PROPERTIES_SUFFIXES = (".properties",)
YAML_SUFFIXES = (".yml", ".yaml")
SPEC_MARKERS = ("name", "model_config", "handler_options", "serialized_file", "extra_files")
DEFAULT_QUEUE = int(str(schema.PROPERTIES["job_queue_size"].default))


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A parsed YAML file and the name findings use for it."""

    label: str
    doc: YamlDoc

    def where(self, *path: str) -> Where:
        return Where(self.label, self.doc.line(*path))


def validate_paths(
    paths: Sequence[Path], root: Path, import_handlers: bool = False
) -> list[Finding]:
    """Findings for every file, in file order; ``root`` is what spec paths are relative to.

    A spec's handler file is read, not run; ``import_handlers`` imports it instead (which
    runs its code) to check options declared in ways reading cannot follow.
    """
    findings: list[Finding] = []
    queue = DEFAULT_QUEUE
    yamls = [p for p in paths if p.suffix in YAML_SUFFIXES]
    project = Project(root)
    specs_dir = _absolute(project.specs_dir)
    in_specs_dir = {p for p in yamls if _absolute(p).parent == specs_dir}
    for path in paths:
        if path.suffix in PROPERTIES_SUFFIXES:
            # load_models is checked against the specs only when they are validated with it
            with_specs = bool(in_specs_dir) and _absolute(path) == _absolute(project.properties)
            found, values = check_properties(path, str(path), specs_dir if with_specs else None)
            findings += found
            queue = _queue_size(values.get("job_queue_size"), queue)
    loaded = {p: _load(p, findings) for p in yamls}
    kinds = {
        p: _kind(doc.doc.data, p in in_specs_dir) for p, doc in loaded.items() if doc is not None
    }
    given_defaults = [loaded[p] for p, kind in kinds.items() if kind == "model-config"]
    defaults = given_defaults[0] if len(given_defaults) == 1 else _root_defaults(root)
    for path, kind in kinds.items():
        doc = loaded[path]
        if doc is None:
            continue
        if kind == "model-config":
            findings += _model_config(doc, queue)
        elif kind == "spec":
            findings += _spec(path, doc, defaults, root, queue, import_handlers)
        elif kind == "empty-spec":
            findings.append(_empty_spec(doc))
        else:
            findings.append(_not_a_mapping(doc))
    return list(dict.fromkeys(findings))


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


# ----- files --------------------------------------------------------------------------------
def _load(path: Path, findings: list[Finding]) -> Loaded | None:
    label = str(path)
    try:
        doc = load_yaml(read_capped(path).decode("utf-8"))
    except ConfigError as err:
        findings.append(
            malformed(
                label,
                None,
                "a small YAML file",
                "check that this is the config you meant",
                str(err),
            )
        )
        return None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if isinstance(err, YamlTooLarge):
            fix = "check that this is the config you meant: a config holds a few dozen values"
        elif isinstance(err, YamlTooComplex):
            fix = "write the values out: no alias that expands without bound or refers to itself"
        else:
            fix = "fix the YAML syntax at that line (indentation, quotes, colons)"
        why = (
            f"malformed YAML: {problem}; TorchServe logs an error and loads the model "
            "without its config"
        )
        findings.append(malformed(label, mark.line + 1 if mark else None, "valid YAML", fix, why))
        return None
    except UnicodeDecodeError as err:
        findings.append(
            malformed(
                label,
                None,
                "UTF-8 text",
                "save the file as UTF-8",
                f"not UTF-8: {err.reason} at byte {err.start}",
            )
        )
        return None
    for key_path, line in doc.duplicates:
        findings.append(
            Finding(
                severity=WARNING,
                code="duplicate-key",
                file=label,
                line=line,
                key=".".join(key_path),
                value="",
                expected="each key once",
                fix="remove one of them",
                problem="written twice; the last one wins",
            )
        )
    findings += [_odd_key(label, *odd) for odd in doc.odd_keys]
    return Loaded(label, dataclasses.replace(doc, data={} if doc.data is None else doc.data))


def _odd_key(label: str, path: tuple[str, ...], line: int, kind: str) -> Finding:
    """A key YAML reads as a number, date, boolean or null: checks below skip it."""
    written = path[-1] if len(path[-1]) <= MAX_SHOWN else f"{path[-1][:MAX_SHOWN]}..."
    key = ".".join((*path[:-1], written))
    return Finding(
        severity=ERROR,
        code="wrong-type",
        file=label,
        line=line,
        key=key,
        value="",
        expected="a string key",
        fix=f'quote it ("{written}": ...) if it is meant as a name, or remove it',
        problem=f"a YAML {kind} key, not a string: no TorchServe setting or handler option has it",
    )


def _string_keys(section: Mapping[Any, Any]) -> dict[str, Any]:
    """``section`` without the keys that are not strings (each reported by ``_odd_key``)."""
    return {k: v for k, v in section.items() if isinstance(k, str)}


def _kind(data: Any, in_specs_dir: bool) -> str:
    """What a YAML file is: every ``config/*.yml`` of the project is a spec (archive reads
    each as one); elsewhere the keys tell."""
    if not isinstance(data, dict):
        return "not-a-mapping"
    if in_specs_dir:
        return "spec" if data else "empty-spec"
    if any(k in data for k in SPEC_MARKERS) or isinstance(data.get("handler"), str):
        return "spec"
    return "model-config"


def _absolute(path: Path) -> Path:
    """``path`` absolute, ``..`` folded, without touching the file system."""
    return Path(os.path.abspath(path))


def _root_defaults(root: Path) -> Loaded | None:
    """The project's model-config.yml, when it is a mapping (otherwise it gets its own
    finding when validated, and specs are checked without defaults)."""
    path = Project(root).model_config
    if not is_file(path):
        return None
    loaded = _load(path, [])
    return loaded if loaded is not None and isinstance(loaded.doc.data, dict) else None


def _queue_size(text: str | None, current: int) -> int:
    valid = text is not None and re.fullmatch(r"[0-9]{1,10}", text) is not None
    return int(str(text)) if valid else current


def _not_a_mapping(doc: Loaded) -> Finding:
    return Finding(
        severity=ERROR,
        code="wrong-type",
        file=doc.label,
        line=doc.doc.line(),
        key="(file)",
        value=show(doc.doc.data),
        expected="a mapping of 'key: value' lines",
        fix="write one 'key: value' per line",
        problem=f"the file holds a YAML {type(doc.doc.data).__name__}, not a mapping",
    )


def _empty_spec(doc: Loaded) -> Finding:
    return Finding(
        severity=ERROR,
        code="missing-key",
        file=doc.label,
        line=None,
        key="(file)",
        value="",
        expected="a model spec with " + ", ".join(schema.SPEC_REQUIRED),
        fix="write the spec (name, version, handler) or delete the file",
        problem="an empty model spec: servekit archive refuses it",
    )


# ----- model-config.yml ---------------------------------------------------------------------
def _model_config(doc: Loaded, queue: int) -> list[Finding]:
    data: dict[str, Any] = doc.doc.data
    findings = check_keys(data, lambda k: doc.where(*k.split(".")))
    section = data.get("handler")
    if isinstance(section, dict):
        findings += check_options(
            HandlerOptions,
            _string_keys(section),
            lambda k: (doc.label, doc.doc.line("handler", k)),
            "the base HandlerOptions (every toolkit handler)",
        )
    return findings + check_effective(data, lambda k: doc.where(k), queue)


# ----- model specs --------------------------------------------------------------------------
def _spec(
    path: Path, doc: Loaded, defaults: Loaded | None, root: Path, queue: int, imports: bool
) -> list[Finding]:
    data: dict[str, Any] = doc.doc.data
    findings = _spec_keys(path, doc, root)
    overrides = data.get("model_config")
    if isinstance(overrides, dict):
        if "handler" in overrides:
            findings.append(_handler_in_model_config(doc, overrides["handler"]))
            overrides = {k: v for k, v in overrides.items() if k != "handler"}
        findings += check_keys(
            overrides, lambda k: doc.where("model_config", *k.split(".")), "model_config."
        )
    else:
        overrides = {}
    base: dict[str, Any] = defaults.doc.data if defaults is not None else {}
    effective = {**base, **overrides}

    def locate(key: str) -> Where:
        if key in overrides or defaults is None:
            return doc.where("model_config", key)
        return defaults.where(key)

    findings += check_effective(effective, locate, queue, "")
    findings += _spec_options(data, doc, defaults, root, imports)
    return findings + _spec_imports(data, doc, root)


def _handler_in_model_config(doc: Loaded, value: Any) -> Finding:
    return Finding(
        severity=ERROR,
        code="misplaced-key",
        file=doc.label,
        line=doc.doc.line("model_config", "handler"),
        key="model_config.handler",
        value=show(value),
        expected="handler options under handler_options:",
        fix="move these options to handler_options: (the spec's handler: section)",
        problem=HANDLER_IN_MODEL_CONFIG.split("; ")[0],
    )


def _spec_imports(data: Mapping[str, Any], doc: Loaded, root: Path) -> list[Finding]:
    """Imports of the handler that fail in a TorchServe worker once archived."""
    handler = data.get("handler")
    if not isinstance(handler, str) or not is_file(root / handler):
        return []
    try:
        problems = import_problems(root / handler, root)
    except ConfigError:  # not Python: _spec_options reports it (bad-handler)
        return []
    return [
        Finding(
            severity=WARNING if p.conditional else ERROR,
            code="conditional-import" if p.conditional else "bad-import",
            file=doc.label,
            line=doc.doc.line("handler"),
            key="handler",
            value=show(handler),
            expected="imports an archived model can satisfy",
            fix=p.fix,
            problem=f"{_shown(p.path, root)}:{p.line}: {p.statement}: {p.problem}"
            + (" (only when the if or function around it runs)" if p.conditional else ""),
        )
        for p in problems
    ]


def _shown(path: Path, root: Path) -> str:
    absolute, base = _absolute(path), _absolute(root)
    return str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(path)


def _spec_keys(path: Path, doc: Loaded, root: Path) -> list[Finding]:
    data: dict[str, Any] = doc.doc.data
    findings = []

    def finding(code: str, key: str, expected: str, fix: str, why: str) -> Finding:
        value = show(data[key]) if key in data else "(unset)"
        return Finding(
            severity=ERROR,
            code=code,
            file=doc.label,
            line=doc.doc.line(key),
            key=key,
            value=value,
            expected=expected,
            fix=fix,
            problem=why,
        )

    for key in _string_keys(data):
        if key not in schema.SPEC:
            close = did_you_mean(str(key), schema.SPEC)
            findings.append(
                finding(
                    "unknown-key",
                    str(key),
                    "a model spec key: " + ", ".join(schema.SPEC),
                    f"did you mean '{close}'?" if close else "remove it",
                    "unknown key: servekit archive would refuse the spec",
                )
            )
    for key in schema.SPEC_REQUIRED:
        if not isinstance(data.get(key), str) or not data[key]:
            why = "missing" if key not in data else f"a {type(data[key]).__name__}, not a string"
            fix = f'quote it: {key}: "{show(data[key])}"' if key in data else f"add {key}: ..."
            findings.append(
                finding(
                    "missing-key" if key not in data else "wrong-type",
                    key,
                    "a non-empty string",
                    fix,
                    why,
                )
            )
    if isinstance(data.get("name"), str) and data["name"] != path.stem:
        findings.append(
            finding(
                "bad-value",
                "name",
                f"the file name, '{path.stem}'",
                f"rename the file to {data['name']}.yml or set name: {path.stem}",
                "the model name must match the spec's file name",
            )
        )
    name = data.get("name")
    if isinstance(name, str) and name and not schema.MODEL_NAME.fullmatch(name):
        findings.append(
            finding(
                "bad-value",
                "name",
                "letters, digits, '_', '-' and '.', starting with a letter or digit",
                "rename the model (and its spec file), e.g. with '_' for spaces",
                'torch-model-archiver refuses it: "Model name contains special characters"',
            )
        )
    findings += _spec_files(doc, root)
    for key in ("model_config", "handler_options"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            findings.append(
                finding(
                    "wrong-type",
                    key,
                    "a mapping",
                    f"write {key}: followed by indented 'key: value' lines",
                    "not a mapping",
                )
            )
    return findings


def _spec_files(doc: Loaded, root: Path) -> list[Finding]:
    data: dict[str, Any] = doc.doc.data
    listed: list[tuple[str, Any, int | None]] = [
        (key, data[key], doc.doc.line(key))
        for key in ("handler", "serialized_file")
        if data.get(key) is not None
    ]
    extra = data.get("extra_files") or []
    if not isinstance(extra, list):
        return [
            Finding(
                severity=ERROR,
                code="wrong-type",
                file=doc.label,
                line=doc.doc.line("extra_files"),
                key="extra_files",
                value=show(extra),
                expected="a list of paths",
                fix="write one '- path' line per file",
                problem="not a list",
            )
        ]
    listed += [
        (f"extra_files.{i}", v, doc.doc.line("extra_files", str(i))) for i, v in enumerate(extra)
    ]
    findings = []
    for key, value, line in listed:
        if not isinstance(value, str) or not is_file(root / value):
            findings.append(
                Finding(
                    severity=ERROR,
                    code="missing-file",
                    file=doc.label,
                    line=line,
                    key=key,
                    value=show(value),
                    expected="a file path relative to the project",
                    fix="fix the path or add the file",
                    problem="no such file: servekit archive fails",
                )
            )
    return findings


def _spec_options(
    data: Mapping[str, Any], doc: Loaded, defaults: Loaded | None, root: Path, imports: bool
) -> list[Finding]:
    own = data.get("handler_options") or {}
    base = (defaults.doc.data.get("handler") if defaults is not None else None) or {}
    if not isinstance(own, dict) or not isinstance(base, dict):
        return []
    own, base = _string_keys(own), _string_keys(base)
    handler = data.get("handler")
    if not isinstance(handler, str) or not is_file(root / handler):
        return []

    def finding(
        sev: str, code: str, key: str, value: Any, expected: str, fix: str, why: str
    ) -> Finding:
        return Finding(
            severity=sev,
            code=code,
            file=doc.label,
            line=doc.doc.line(key),
            key=key,
            value=show(value),
            expected=expected,
            fix=fix,
            problem=why,
        )

    try:
        options = declared_options(root / handler, root, imports)
    except Unresolved as err:
        if not {**base, **own}:
            return []
        return [
            finding(
                WARNING,
                "options-unchecked",
                "handler",
                handler,
                "an options_class readable without running the handler: a dataclass of "
                "bool, int, float, str fields with literal defaults",
                "validate with --import-handlers to import the handler (runs its code)",
                f"handler options not checked: {err}",
            )
        ]
    except ConfigError as err:  # not one class, not Python, or (imported) raised on import
        one_class = "exactly one class" in str(err)
        return [
            finding(
                ERROR,
                "bad-handler",
                "handler",
                handler,
                "a handler file with exactly one class"
                if one_class
                else "a readable Python handler file",
                "move helper classes to their own module" if one_class else "fix the handler file",
                str(err),
            )
        ]
    section = {**base, **own}
    if options is None:
        if not own:
            return []
        return [
            Finding(
                severity=ERROR,
                code="undeclared-option",
                file=doc.label,
                line=doc.doc.line("handler_options"),
                key="handler_options",
                value=show(own),
                expected="no options: the handler declares none",
                fix="remove handler_options or give the handler an options_class",
                problem="the handler declares no options_class",
            )
        ]

    def where(key: str) -> tuple[str, int | None]:
        if key in own or defaults is None:
            return doc.label, doc.doc.line("handler_options", key)
        return defaults.label, defaults.doc.line("handler", key)

    return check_options(options, section, where, handler)


# ----- servekit validate --------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="servekit validate",
        description="Check config.properties, model-config.yml and model specs before "
        "TorchServe sees them.",
        epilog="Exit codes: 0 no error (warnings allowed), 1 an error found, 2 usage error.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="FILE",
        help=".properties, .yml or .yaml files (default: the project's config.properties, "
        "model-config.yml and config/*.yml)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--import-handlers",
        action="store_true",
        help="import each spec's handler to find its options (RUNS ITS CODE; default: read it)",
    )
    add_argument(parser)
    args = parser.parse_args(argv)
    try:  # named files need no project unless --project names one: specs resolve against cwd
        project = from_args(args, check=not args.paths or args.project is not None)
    except ToolkitError as err:
        print(f"servekit validate: {printable(str(err))}", file=sys.stderr)
        return 2
    paths = list(args.paths) or project_files(project)
    for path in paths:
        if path.suffix not in PROPERTIES_SUFFIXES + YAML_SUFFIXES:
            parser.error(f"{printable(str(path))}: not a .properties, .yml or .yaml file")
        if (why := not_a_file(path)) is not None:
            parser.error(f"{printable(str(path))}: {why}")
    # Keys and values may hold lone surrogates or bytes that are not UTF-8: escape, never fail.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    # Importing TorchServe's base handler logs optional-backend notices; they are not findings.
    logging.getLogger("ts").setLevel(logging.ERROR)
    findings = validate_paths(paths, project.root, args.import_handlers)
    if args.json:
        report = {"ok": not has_errors(findings), "findings": [f.as_dict() for f in findings]}
        print(json.dumps(report, indent=2))
    else:
        for finding in findings:
            print(finding.text())
        errors = sum(f.severity == ERROR for f in findings)
        print(f"{len(paths)} file(s): {errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if has_errors(findings) else 0


def project_files(project: Project) -> list[Path]:
    """What ``servekit validate`` checks by default, named as the user would from here."""
    files = [project.properties, project.model_config, *project.specs()]
    return [_from_here(p) for p in files if p.exists()]


def _from_here(path: Path) -> Path:
    cwd = Path.cwd()
    return path.relative_to(cwd) if path.is_relative_to(cwd) else path

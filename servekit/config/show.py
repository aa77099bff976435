"""``servekit show-config NAME``: a model's effective model config and where each value comes from.

    servekit show-config iris                 # in the project, or --project DIR

Values set in model-config.yml or the spec name their file; handler options nobody set show
the handler's declared default. The validator's findings for the model follow the table;
the exit code is 1 when there is an error, 2 when there is no such model or project or its
spec or model-config.yml cannot be loaded (as ``servekit archive``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servekit.config import schema
from servekit.config.findings import MAX_SHOWN, jsonable, key_text, printable
from servekit.config.handler_options import declared_options
from servekit.config.limits import is_file
from servekit.config.specs import ModelSpec, config_sources, load_spec, read_yaml
from servekit.config.validate import has_errors, validate_paths
from servekit.errors import ToolkitError
from servekit.project import Project, add_argument, from_args
from servekit.runtime.decoding import cut


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="servekit show-config",
        description="Show a model's effective config and where each value comes from.",
        epilog="Exit codes: 0 ok, 1 the validator found an error, 2 no such model or project, "
        "or a spec that cannot be loaded.",
    )
    parser.add_argument("name", help="model name: the spec config/<name>.yml")
    parser.add_argument(
        "--import-handlers",
        action="store_true",
        help="import the handler to find its options (RUNS ITS CODE; default: read it)",
    )
    add_argument(parser)
    args = parser.parse_args(argv)
    try:
        project = from_args(args)
    except ToolkitError as err:
        print(f"servekit show-config: {printable(str(err))}", file=sys.stderr)
        return 2
    if not schema.MODEL_NAME.fullmatch(args.name):
        parser.error(
            f"{printable(args.name)!r} is not a model name (letters, digits, '_', '-', '.'; "
            "no path): show-config takes NAME of config/NAME.yml"
        )
    spec_path = project.spec(args.name)
    if not is_file(spec_path):
        known = ", ".join(p.stem for p in project.specs()) or "none"
        parser.error(f"no spec config/{printable(args.name)}.yml (known: {known})")
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    logging.getLogger("ts").setLevel(logging.ERROR)  # TorchServe's import-time notices
    try:
        spec = load_spec(spec_path, project.root)
        defaults = read_yaml(project.model_config) if project.model_config.exists() else None
        sources = config_sources(spec, defaults or {}, project.model_config)
        sources = {**_handler_defaults(spec, project, args.import_handlers), **sources}
    except ToolkitError as err:  # a spec archive would refuse too: bad input, as there
        print(f"servekit show-config: {printable(str(err))}", file=sys.stderr)
        return 2
    rows = sorted(
        (printable(key_text(k)), _value(v), printable(_relative(o, project)))
        for k, (v, o) in sources.items()
    )
    width = max((len(key) for key, _, _ in rows), default=0)
    for key, shown, origin in rows:
        print(f"{key:<{width}}  {shown:<8}  {origin}")
    files = [p for p in (project.model_config, spec_path) if p.exists()]
    findings = validate_paths(files, project.root, args.import_handlers)
    for finding in findings:
        print(finding.text())
    return 1 if has_errors(findings) else 0


def _handler_defaults(
    spec: ModelSpec, project: Project, import_handler: bool
) -> dict[str, tuple[Any, str]]:
    """Options the handler declares, at their defaults (overridden by what the files set)."""
    try:
        options = declared_options(spec.handler, project.root, import_handler)
    except ToolkitError:  # the validator's findings below say what is wrong with the handler
        return {}
    if options is None:
        return {}
    origin = f"{spec.handler} (handler default)"
    return {f"handler.{f.name}": (f.default, origin) for f in dataclasses.fields(options)}


def _value(value: Any) -> str:
    """One cell: JSON (so strings show their quotes), cut, on one line."""
    return cut(json.dumps(jsonable(value)), MAX_SHOWN, length=True)  # dates as written, "NaN"


def _relative(origin: str, project: Project) -> str:
    """``origin`` (a path, maybe followed by a note) relative to the project root."""
    path = Path(origin)
    return str(path.relative_to(project.root)) if path.is_relative_to(project.root) else origin

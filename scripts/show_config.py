"""Print a model's effective model config and where each value comes from.

python scripts/show_config.py iris        # or: make show-config NAME=iris

Values set in model-config.yml or the spec name their file; handler options nobody
set show the handler's declared default. The validator's findings for the model
follow the table; the exit code is 1 when there is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.config.findings import MAX_SHOWN, jsonable, key_text, printable  # noqa: E402
from servekit.config.handler_options import declared_options  # noqa: E402
from servekit.config.limits import is_file  # noqa: E402
from servekit.config.specs import ModelSpec, config_sources, load_spec, read_yaml  # noqa: E402
from servekit.config.validate import has_errors, validate_paths  # noqa: E402
from servekit.errors import ToolkitError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show a model's effective config.")
    parser.add_argument("name", help="model name: a spec config/<name>.yml")
    parser.add_argument(
        "--import-handlers",
        action="store_true",
        help="import the handler to find its options (RUNS ITS CODE; default: read it)",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    logging.getLogger("ts").setLevel(logging.ERROR)  # TorchServe's import-time notices
    spec_path = ROOT / "config" / f"{args.name}.yml"
    if not is_file(spec_path):
        known = ", ".join(sorted(p.stem for p in (ROOT / "config").glob("*.yml")))
        parser.error(f"no spec config/{args.name}.yml (known: {known})")
    try:
        defaults_path = ROOT / "model-config.yml"
        spec = load_spec(spec_path, ROOT)
        sources = config_sources(spec, read_yaml(defaults_path) or {}, defaults_path)
        sources = {**_handler_defaults(spec, args.import_handlers), **sources}
    except ToolkitError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 1
    rows = sorted(
        (printable(key_text(k)), _value(v), printable(_relative(o)))
        for k, (v, o) in sources.items()
    )
    width = max((len(key) for key, _, _ in rows), default=0)
    for key, shown, origin in rows:
        print(f"{key:<{width}}  {shown:<8}  {origin}")
    findings = validate_paths([defaults_path, spec_path], ROOT, args.import_handlers)
    for finding in findings:
        print(finding.text())
    return 1 if has_errors(findings) else 0


def _handler_defaults(spec: ModelSpec, import_handler: bool) -> dict[str, tuple[Any, str]]:
    """Options the handler declares, at their defaults (overridden by what the files set)."""
    try:
        options = declared_options(spec.handler, ROOT, import_handler)
    except ToolkitError:  # the validator's findings below say what is wrong with the handler
        return {}
    if options is None:
        return {}
    origin = f"{spec.handler} (handler default)"
    return {f"handler.{f.name}": (f.default, origin) for f in dataclasses.fields(options)}


def _value(value: Any) -> str:
    """One cell: JSON (so strings show their quotes), cut, on one line."""
    shown = json.dumps(jsonable(value))  # YAML dates print as written, NaN as "NaN"
    return shown if len(shown) <= MAX_SHOWN else f"{shown[:MAX_SHOWN]}... ({len(shown)} chars)"


def _relative(origin: str) -> str:
    path = Path(origin)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else origin


if __name__ == "__main__":
    sys.exit(main())

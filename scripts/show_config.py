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

from servekit.errors import ToolkitError  # noqa: E402
from servekit.handler_options import handler_class, options_class  # noqa: E402
from servekit.specs import ModelSpec, config_sources, load_spec, read_yaml  # noqa: E402
from servekit.validate import has_errors, validate_paths  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show a model's effective config.")
    parser.add_argument("name", help="model name: a spec config/<name>.yml")
    args = parser.parse_args(argv)
    logging.getLogger("ts").setLevel(logging.ERROR)  # TorchServe's import-time notices
    spec_path = ROOT / "config" / f"{args.name}.yml"
    if not spec_path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "config").glob("*.yml")))
        parser.error(f"no spec config/{args.name}.yml (known: {known})")
    try:
        defaults_path = ROOT / "model-config.yml"
        spec = load_spec(spec_path, ROOT)
        sources = config_sources(spec, read_yaml(defaults_path) or {}, defaults_path)
        sources = {**_handler_defaults(spec), **sources}
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    width = max(len(key) for key in sources)
    for key, (value, origin) in sorted(sources.items()):
        print(f"{key:<{width}}  {json.dumps(value):<8}  {_relative(origin)}")
    findings = validate_paths([defaults_path, spec_path], ROOT)
    for finding in findings:
        print(finding.text())
    return 1 if has_errors(findings) else 0


def _handler_defaults(spec: ModelSpec) -> dict[str, tuple[Any, str]]:
    """Options the handler declares, at their defaults (overridden by what the files set)."""
    options = options_class(handler_class(spec.handler, ROOT))
    if options is None:
        return {}
    origin = f"{spec.handler} (handler default)"
    return {f"handler.{f.name}": (f.default, origin) for f in dataclasses.fields(options)}


def _relative(origin: str) -> str:
    path = Path(origin)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else origin


if __name__ == "__main__":
    sys.exit(main())

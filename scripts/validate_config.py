"""Validate TorchServe config files before the server starts (``make validate``).

    python scripts/validate_config.py config.properties model-config.yml config/*.yml
    python scripts/validate_config.py --json config.properties
    python scripts/validate_config.py --import-handlers config/iris.yml   # runs the handler

Reads ``.properties`` files (as ISO-8859-1, like Java), ``model-config.yml`` files and model
specs (``config/<model>.yml``). A spec's handler file is read, never run: its options class is
found in its source. ``--import-handlers`` imports the handler instead, which runs its code:
use it only on handlers you trust, for options declared in ways reading cannot follow (the
validator then warns ``options-unchecked``). Every file gets findings or a clean error,
whatever it holds: files over 1 MiB, YAML alias bombs and recursive aliases, nesting deeper
than 64 levels, more than 100,000 values, integers of more than 4,000 digits (in any YAML
form) and regexes too costly to compile or match are reported, not loaded.

Prints one line per finding: file, line, key, value,
what is wrong, what is expected and the fix. Exit codes: 0 no error (warnings
allowed), 1 at least one error, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.config.findings import printable  # noqa: E402
from servekit.config.limits import not_a_file  # noqa: E402
from servekit.config.validate import (  # noqa: E402
    PROPERTIES_SUFFIXES,
    YAML_SUFFIXES,
    has_errors,
    validate_paths,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Validate TorchServe config.properties, model-config.yml and model specs."
    )
    parser.add_argument("paths", nargs="+", type=Path, help=".properties, .yml or .yaml files")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="what spec paths are relative to (the repo)"
    )
    parser.add_argument(
        "--import-handlers",
        action="store_true",
        help="import each spec's handler to find its options (RUNS ITS CODE; default: read it)",
    )
    args = parser.parse_args(argv)
    # Keys and values may hold lone surrogates or bytes that are not UTF-8: escape, never fail.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    # Importing TorchServe's base handler logs optional-backend notices; they are not findings.
    logging.getLogger("ts").setLevel(logging.ERROR)
    for path in args.paths:
        if path.suffix not in PROPERTIES_SUFFIXES + YAML_SUFFIXES:
            parser.error(f"{printable(str(path))}: not a .properties, .yml or .yaml file")
        if (why := not_a_file(path)) is not None:
            parser.error(f"{printable(str(path))}: {why}")
    findings = validate_paths(args.paths, args.root, args.import_handlers)
    errors = sum(f.severity == "error" for f in findings)
    summary = f"{len(args.paths)} file(s): {errors} error(s), {len(findings) - errors} warning(s)"
    if args.json:
        report = {"ok": not has_errors(findings), "findings": [f.as_dict() for f in findings]}
        print(json.dumps(report, indent=2))
    else:
        for finding in findings:
            print(finding.text())
        print(summary)
    return 1 if has_errors(findings) else 0


if __name__ == "__main__":
    sys.exit(main())

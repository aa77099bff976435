"""Validate TorchServe config files before the server starts (``make validate``).

    python scripts/validate_config.py config.properties model-config.yml config/*.yml
    python scripts/validate_config.py --json config.properties

Reads ``.properties`` files, ``model-config.yml`` files and model specs
(``config/<model>.yml``). Prints one line per finding: file, line, key, value,
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

from servekit.validate import (  # noqa: E402
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
    args = parser.parse_args(argv)
    # Importing TorchServe's base handler logs optional-backend notices; they are not findings.
    logging.getLogger("ts").setLevel(logging.ERROR)
    for path in args.paths:
        if path.suffix not in PROPERTIES_SUFFIXES + YAML_SUFFIXES:
            parser.error(f"{path}: not a .properties, .yml or .yaml file")
        if not path.is_file():
            parser.error(f"{path}: no such file")
    findings = validate_paths(args.paths, args.root)
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

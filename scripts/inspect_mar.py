"""Show a ``.mar``'s manifest, model config and files, and check it against its spec.

python scripts/inspect_mar.py model_store/iris.mar          # or: make inspect NAME=iris
python scripts/inspect_mar.py model_store/iris.mar --json

The spec is ``config/<modelName>.yml``. Exit codes: 0 the archive matches its spec,
1 it does not (or cannot be read), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.errors import ToolkitError  # noqa: E402
from servekit.marinfo import MarInfo, check_against_spec, read_mar  # noqa: E402
from servekit.specs import load_spec, read_yaml  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inspect a .mar and check it against its spec.")
    parser.add_argument("mar", type=Path, help="a .mar file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--config-dir", type=Path, default=ROOT / "config")
    parser.add_argument("--defaults", type=Path, default=ROOT / "model-config.yml")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if not args.mar.is_file():
        parser.error(f"{args.mar}: no such file")
    try:
        info = read_mar(args.mar)
        name = str(info.manifest.get("model", {}).get("modelName", ""))
        spec_path = args.config_dir / f"{name}.yml"
        if not spec_path.is_file():
            problems = [f"no spec {spec_path} for model '{name}'"]
        else:
            spec = load_spec(spec_path, ROOT)
            problems = check_against_spec(info, spec, read_yaml(args.defaults) or {}, ROOT)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_report(info, problems), indent=2, default=str))
    else:
        _print(info, problems)
    return 1 if problems else 0


def _report(info: MarInfo, problems: list[str]) -> dict[str, object]:
    return {
        "file": str(info.path),
        "sha256": info.sha256(),
        "manifest": info.manifest,
        "model_config": info.model_config,
        "files": {
            name: {"bytes": entry.size, "sha256": entry.sha256}
            for name, entry in sorted(info.files.items())
        },
        "matches_spec": not problems,
        "problems": problems,
    }


def _print(info: MarInfo, problems: list[str]) -> None:
    print(f"{info.path}  sha256 {info.sha256()}")
    print("manifest:")
    print("  " + json.dumps(info.manifest, indent=2, default=str).replace("\n", "\n  "))
    print("model config:")
    for key, value in sorted((info.model_config or {}).items()):
        print(f"  {key}: {json.dumps(value, default=str)}")
    print("files:")
    for name, entry in sorted(info.files.items()):
        print(f"  {entry.size:>9}  {entry.sha256[:12]}  {name}")
    if problems:
        print("does NOT match its spec:")
        print("\n".join(f"  - {p}" for p in problems))
    else:
        print("matches its spec")


if __name__ == "__main__":
    sys.exit(main())

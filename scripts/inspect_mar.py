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

from servekit.config.findings import jsonable, printable  # noqa: E402
from servekit.config.limits import is_file, not_a_file  # noqa: E402
from servekit.config.specs import load_spec, read_yaml  # noqa: E402
from servekit.errors import ToolkitError  # noqa: E402
from servekit.serve.marinfo import MarInfo, check_against_spec, read_mar  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inspect a .mar and check it against its spec.")
    parser.add_argument("mar", type=Path, help="a .mar file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--config-dir", type=Path, default=ROOT / "config")
    parser.add_argument("--defaults", type=Path, default=ROOT / "model-config.yml")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if (why := not_a_file(args.mar)) is not None:
        return _fail(args, f"{parser.prog}: error: {args.mar}: {why}", 2, parser.format_usage())
    try:
        info = read_mar(args.mar)
        name = str(info.manifest.get("model", {}).get("modelName", ""))
        spec_path = args.config_dir / f"{name}.yml"
        if not is_file(spec_path):
            problems = [f"no spec {spec_path} for model '{name}'"]
        else:
            spec = load_spec(spec_path, ROOT)
            problems = check_against_spec(info, spec, read_yaml(args.defaults) or {}, ROOT)
    except ToolkitError as err:
        return _fail(args, f"error: {err}", 1)
    if args.json:
        print(_strict_json(_report(info, problems)))
    else:
        _print(info, problems)
    return 1 if problems else 0


def _fail(args: argparse.Namespace, message: str, code: int, usage: str = "") -> int:
    """A clean error: on stderr, and with --json a JSON object on stdout as well."""
    if args.json:
        print(_strict_json({"file": str(args.mar), "matches_spec": False, "error": message}))
    print(f"{usage}{printable(message)}", file=sys.stderr)
    return code


def _strict_json(report: dict[str, object]) -> str:
    """JSON any parser reads: no NaN or Infinity, string keys only (see ``jsonable``)."""
    return json.dumps(jsonable(report), indent=2, allow_nan=False)


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
    """The report as text; every name and key from the archive escaped (no forged lines or
    terminal escapes)."""
    print(printable(f"{info.path}  sha256 {info.sha256()}"))
    print("manifest:")
    print("  " + json.dumps(jsonable(info.manifest), indent=2).replace("\n", "\n  "))
    print("model config:")
    config = jsonable(info.model_config or {})
    for key in sorted(config):
        print(f"  {printable(key)}: {json.dumps(config[key])}")
    print("files:")
    for name, entry in sorted(info.files.items()):
        print(f"  {entry.size:>9}  {entry.sha256[:12]}  {printable(name)}")
    if problems:
        print("does NOT match its spec:")
        print("\n".join(f"  - {printable(p)}" for p in problems))
    else:
        print("matches its spec")


if __name__ == "__main__":
    sys.exit(main())

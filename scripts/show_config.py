"""Print a model's effective model config and where each value comes from.

python scripts/show_config.py iris        # or: make show-config NAME=iris
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.errors import ToolkitError  # noqa: E402
from servekit.specs import config_sources, load_spec, read_yaml  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show a model's effective config.")
    parser.add_argument("name", help="model name: a spec config/<name>.yml")
    args = parser.parse_args(argv)
    spec_path = ROOT / "config" / f"{args.name}.yml"
    if not spec_path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "config").glob("*.yml")))
        parser.error(f"no spec config/{args.name}.yml (known: {known})")
    try:
        defaults_path = ROOT / "model-config.yml"
        spec = load_spec(spec_path, ROOT)
        sources = config_sources(spec, read_yaml(defaults_path) or {}, defaults_path)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    width = max(len(key) for key in sources)
    for key, (value, origin) in sorted(sources.items()):
        print(f"{key:<{width}}  {value!s:<8}  {Path(origin).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build every model's ``.mar`` into ``model_store/`` (``make archive``).

python scripts/build_archives.py            # all specs in config/, only what changed
python scripts/build_archives.py iris -f    # one model, rebuilt even if up to date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.config.specs import load_specs, read_yaml  # noqa: E402
from servekit.errors import ToolkitError  # noqa: E402
from servekit.serve.archive import build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to build (default: every spec)")
    parser.add_argument("-f", "--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--config-dir", type=Path, default=ROOT / "config")
    parser.add_argument("--defaults", type=Path, default=ROOT / "model-config.yml")
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    args = parser.parse_args(argv)
    try:
        defaults = read_yaml(args.defaults) or {}
        specs = load_specs(args.config_dir, ROOT)
        unknown = sorted(set(args.names) - {s.name for s in specs})
        if unknown:
            parser.error(f"no spec in {args.config_dir} for: {', '.join(unknown)}")
        for spec in specs:
            if args.names and spec.name not in args.names:
                continue
            result = build(spec, defaults, ROOT, args.store, force=args.force)
            state = "built" if result.rebuilt else "up to date"
            shown = (
                result.path.relative_to(ROOT) if result.path.is_relative_to(ROOT) else result.path
            )
            print(f"{result.name:<16} {state:<11} {shown}")
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write ``docs/config-keys.md`` from the schema (``make config-docs``).

python scripts/config_docs.py            # print it
python scripts/config_docs.py --write    # rewrite docs/config-keys.md
python scripts/config_docs.py --check    # exit 1 when the committed file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.config.schema_docs import render  # noqa: E402

DOCS = ROOT / "docs" / "config-keys.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render docs/config-keys.md from the schema.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {DOCS.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(text)
        print(f"wrote {DOCS.relative_to(ROOT)}")
    elif args.check:
        if not DOCS.is_file() or DOCS.read_text() != text:
            print(f"{DOCS.relative_to(ROOT)} is out of date: run make config-docs", file=sys.stderr)
            return 1
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

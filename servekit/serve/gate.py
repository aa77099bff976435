"""``servekit gate``: build a model's ONNX backends in a temporary directory and show how closely
each matches eager fp32 on its gate's held-out set (nothing is archived).

    servekit gate minilm                             # every backend's figures
    servekit gate efficientnet --backend onnxruntime-int8 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from servekit import project
from servekit.config.specs import effective_config, load_spec, read_yaml
from servekit.errors import ConfigError, ToolkitError, os_error_text
from servekit.runtime.backend_names import BACKENDS, EAGER
from servekit.serve import backends
from servekit.serve.archive import stage_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit gate",
        description="Build a model's ONNX backends in a temporary directory and show how "
        "closely each matches eager fp32 on its gate's held-out set (nothing is archived). "
        "Exit codes: 0 every backend shown passes, 1 one fails the gate or cannot be built, "
        "2 usage or bad input.",
    )
    parser.add_argument("name", metavar="NAME", help="the model (a spec in config/)")
    parser.add_argument(
        "--backend",
        action="append",
        choices=[b for b in BACKENDS if b != EAGER],
        help="only this backend (repeatable; default: every one)",
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="the specs (default: the project's config/)"
    )
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = args.backend or [b for b in BACKENDS if b != EAGER]
    try:
        where = project.from_args(args)
        specs_dir = args.config_dir or where.specs_dir
        path = specs_dir / f"{args.name}.yml"
        if not path.is_file():
            known = sorted(p.stem for p in specs_dir.glob("*.yml"))
            parser.error(f"no spec {args.name!r} in {specs_dir} (there are: {', '.join(known)})")
        spec = load_spec(path, where.root)
        defaults = read_yaml(where.model_config) if where.model_config.is_file() else {}
        config = effective_config(spec, defaults)
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            staged = stage_files(spec, where.root, Path(tmp) / "stage")
            out = Path(tmp) / "out"
            out.mkdir()
            with backends.eager_handler(spec, config, staged) as handler:
                results = backends.builder().build_all(chosen, handler, out)
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except ToolkitError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{parser.prog}: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            verdict = "PASS" if r.passed else "FAIL"
            print(f"{spec.name} {r.backend:<17} {verdict}  {r.summary()}")
            if r.kept_fp32:
                print(f"{'':<{len(spec.name) + 19}}left in fp32: {', '.join(r.kept_fp32)}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Render the schema (``servekit.config.schema``) and finding codes as ``docs/config-keys.md``.

servekit config-docs                  # print it
servekit config-docs --write          # rewrite the project's docs/config-keys.md
servekit config-docs --out FILE       # write FILE instead
servekit config-docs --check          # exit 1 when the written file is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from servekit.config import schema
from servekit.config.findings import CODES, printable
from servekit.config.schema import Key
from servekit.errors import ToolkitError
from servekit.project import add_argument, from_args

DOCS = Path("docs", "config-keys.md")

HEADER = """\
# TorchServe 0.12 config keys

Generated from `servekit/config/schema.py` by `servekit config-docs --write`; do not edit
by hand (a test fails when this file is out of date). Each key was read from the 0.12.0
source: `ConfigManager.java`, `ModelConfig.java`, `ModelManager.java`, `ts/model_server.py`.
`servekit validate` checks every file against these tables.
"""

INTROS = {
    schema.PROPERTIES_FILE: "Text values; TorchServe parses each as shown. Unknown keys are "
    "ignored silently.",
    schema.MODELS_JSON: 'The `models=` value of config.properties: `{"model": {"version": '
    "{...}}}`. Values <= 0 silently fall back to defaults.",
    schema.MODEL_CONFIG_FILE: 'Typed YAML values: a wrong type (`"4"`, `50.0`) logs a WARN and '
    "keeps the default. Other sections reach the handler as `context.model_yaml_config`.",
    schema.TORCHRUN: "Keys of the `torchrun:` section of model-config.yml.",
    schema.SPEC_FILE: "The toolkit's model specs, read by `servekit archive`; their paths are "
    "relative to the project.",
}


def render() -> str:
    parts = [HEADER]
    for title, keys in schema.TABLES.items():
        parts.append(f"\n## {title}\n\n{INTROS[title]}\n\n{_table(keys)}")
    parts.append("\n## Finding codes\n\n| code | severity | catches |\n|---|---|---|\n")
    parts.append("".join(f"| `{c}` | {s} | {m} |\n" for c, (s, m) in CODES.items()))
    return "".join(parts)


def _table(keys: Mapping[str, Key]) -> str:
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for key in keys.values():
        default = "" if key.default is None else f"`{_text(key.default)}`"
        meaning = key.meaning + (" *(internal)*" if key.internal else "")
        rows.append(
            f"| `{key.name}` | {key.kind} | {default} | {_escape(key.allowed())} | "
            f"{_escape(meaning)} |"
        )
    return "\n".join(rows) + "\n"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="servekit config-docs",
        description="Render the config key reference (docs/config-keys.md) from the schema.",
        epilog="Exit codes: 0 ok, 1 --check found the file out of date, 2 usage error.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite the project's {DOCS}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help=f"the file to write or check (default: {DOCS})"
    )
    add_argument(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not (args.write or args.check):
        parser.error("--out needs --write or --check")
    text = render()
    if not (args.write or args.check):
        print(text, end="")
        return 0
    try:
        target = args.out or from_args(args).root / DOCS
    except ToolkitError as err:
        print(f"servekit config-docs: {printable(str(err))}", file=sys.stderr)
        return 2
    if args.check:
        if not target.is_file():
            print(f"{target} is missing: run servekit config-docs --write", file=sys.stderr)
            return 1
        try:
            written = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8"
            print(f"servekit config-docs: cannot read {target}: {why}", file=sys.stderr)
            return 2
        if written != text:
            print(f"{target} is out of date: run servekit config-docs --write", file=sys.stderr)
            return 1
        return 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as err:
        print(
            f"servekit config-docs: cannot write {target}: {err.strerror or err}", file=sys.stderr
        )
        return 2
    print(f"wrote {target}")
    return 0

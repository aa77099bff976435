"""Render the schema (``servekit.config.schema``) and finding codes as ``docs/config-keys.md``."""

from __future__ import annotations

from collections.abc import Mapping

from servekit.config import schema
from servekit.config.findings import CODES
from servekit.config.schema import Key

HEADER = """\
# TorchServe 0.12 config keys

Generated from `servekit/config/schema.py` by `make config-docs`; do not edit by hand
(a test fails when this file is out of date). Each key was read from the 0.12.0
source: `ConfigManager.java`, `ModelConfig.java`, `ModelManager.java`, `ts/model_server.py`.
`scripts/validate_config.py` checks every file against these tables.
"""

INTROS = {
    schema.PROPERTIES_FILE: "Text values; TorchServe parses each as shown. Unknown keys are "
    "ignored silently.",
    schema.MODELS_JSON: 'The `models=` value of config.properties: `{"model": {"version": '
    "{...}}}`. Values <= 0 silently fall back to defaults.",
    schema.MODEL_CONFIG_FILE: 'Typed YAML values: a wrong type (`"4"`, `50.0`) logs a WARN and '
    "keeps the default. Other sections reach the handler as `context.model_yaml_config`.",
    schema.TORCHRUN: "Keys of the `torchrun:` section of model-config.yml.",
    schema.SPEC_FILE: "The toolkit's model specs, read by `make archive`.",
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

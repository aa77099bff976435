"""Set keys under ``model_config:`` in a model spec, keeping its other lines and comments.

The tuner writes its winning ``batchSize``, ``maxBatchDelay`` and worker counts this way:
the spec is the model's override of model-config.yml, so ``make archive`` picks them up and
``make show-config`` shows where they came from. A line already holding a key gets the new
value and ``note`` as its comment; a missing key is added to the section (the section is
added at the end of the file if there is none). The result is parsed back and checked
before anything is written.

    >>> text = "name: m\\nmodel_config:\\n  batchSize: 4   # old\\n"
    >>> print(set_model_config(text, {"batchSize": 8, "maxBatchDelay": 5}, "tuned"), end="")
    name: m
    model_config:
      batchSize: 8  # tuned
      maxBatchDelay: 5  # tuned
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from servekit.errors import ConfigError

SECTION = re.compile(r"^model_config:\s*(#.*)?$")
TOP_LEVEL = re.compile(r"^[^\s#]")


def set_model_config(text: str, values: Mapping[str, int], note: str) -> str:
    """``text`` with each of ``values`` set under ``model_config:``; see the module docstring."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if SECTION.match(line)), None)
    if start is None:
        if any(line.startswith("model_config:") for line in lines):
            raise ConfigError(
                "model_config is not a block of 'key: value' lines; set the values by hand"
            )
        lines += ["model_config:"]
        start = len(lines) - 1
    end = start + 1
    while end < len(lines) and not TOP_LEVEL.match(lines[end]):
        end += 1
    children = [i for i in range(start + 1, end) if lines[i].strip() and not _comment(lines[i])]
    indent = _indent(lines[children[0]]) if children else "  "
    last = children[-1] if children else start
    for key, value in values.items():
        pattern = re.compile(rf"^{indent}{re.escape(key)}:(\s|$)")
        found = next((i for i in children if pattern.match(lines[i])), None)
        line = f"{indent}{key}: {value}  # {note}"
        if found is not None:
            lines[found] = line
        else:
            last += 1
            lines.insert(last, line)
    result = "\n".join(lines) + "\n"
    _check(result, values)
    return result


def write_model_config(path: Path, values: Mapping[str, int], note: str) -> None:
    """Edit the spec at ``path`` in place (see :func:`set_model_config`)."""
    try:
        edited = set_model_config(path.read_text(encoding="utf-8"), values, note)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    path.write_text(edited, encoding="utf-8")


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _check(text: str, values: Mapping[str, int]) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"editing model_config would break the YAML ({err}); edit by hand"
        ) from None
    section = data.get("model_config") if isinstance(data, dict) else None
    if not isinstance(section, dict) or any(section.get(k) != v for k, v in values.items()):
        raise ConfigError(f"model_config would not hold {dict(values)} after the edit")

"""Set keys under ``model_config:`` (or ``handler_options:``) in a model spec, keeping its
other lines and comments.

The tuner writes its winning ``batchSize``, ``maxBatchDelay`` and worker counts this way
(and ``torch_threads`` under ``handler_options:`` for more than one worker):
the spec is the model's override of model-config.yml, so ``make archive`` picks them up and
``make show-config`` shows where they came from. A line already holding a key gets the new
value and ``note`` as its comment; a missing key is added to the section (the section is
added at the end of the file if there is none). The result is parsed back and checked
before anything is written.

    >>> text = "name: m\\nmodel_config:\\n  batchSize: 4   # old\\n"
    >>> print(set_section(text, "model_config", {"batchSize": 8, "maxBatchDelay": 5}, "tuned"),
    ...       end="")
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

SECTIONS = ("model_config", "handler_options")
TOP_LEVEL = re.compile(r"^[^\s#]")


def set_section(text: str, section: str, values: Mapping[str, int], note: str) -> str:
    """``text`` with each of ``values`` set under ``section:``; see the module docstring."""
    if section not in SECTIONS:
        raise ConfigError(f"section {section!r}: only {', '.join(SECTIONS)} can be edited")
    header = re.compile(rf"^{section}:\s*(#.*)?$")
    empty = re.compile(rf"^{section}:\s*(\{{\}}|null|~)?\s*(#.*)?$")  # an empty mapping
    lines = [
        f"{section}:" + (f"  {m.group(2)}" if m.group(2) else "")
        if (m := empty.match(line))
        else line
        for line in text.splitlines()
    ]
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        if any(line.startswith(f"{section}:") for line in lines):
            raise ConfigError(
                f"{section} is not a block of 'key: value' lines; set the values by hand"
            )
        lines += [f"{section}:"]
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
    _check(result, section, values)
    return result


def write_sections(path: Path, sections: Mapping[str, Mapping[str, int]], note: str) -> None:
    """Edit the spec at ``path`` in place, every section or none (see :func:`set_section`)."""
    text = path.read_text(encoding="utf-8")
    try:
        for section, values in sections.items():
            text = set_section(text, section, values, note)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    path.write_text(text, encoding="utf-8")


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _check(text: str, section: str, values: Mapping[str, int]) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"editing {section} would break the YAML ({err}); edit by hand") from None
    held = data.get(section) if isinstance(data, dict) else None
    if not isinstance(held, dict) or any(held.get(k) != v for k, v in values.items()):
        raise ConfigError(f"{section} would not hold {dict(values)} after the edit")

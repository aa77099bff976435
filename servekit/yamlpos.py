"""Parse YAML with PyYAML's node API so every key keeps its line number.

>>> doc = load_yaml("a: 1\\nb:\\n  c: 2\\n")
>>> doc.data, doc.line("b", "c")
({'a': 1, 'b': {'c': 2}}, 3)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

Path_ = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class YamlDoc:
    """The parsed data, the line of each key path, and keys written twice."""

    data: Any
    lines: dict[Path_, int]
    duplicates: tuple[tuple[Path_, int], ...]

    def line(self, *path: str) -> int | None:
        return self.lines.get(tuple(path))


def load_yaml(text: str) -> YamlDoc:
    """Parse ``text``; raises ``yaml.YAMLError`` (with ``problem_mark``) when malformed."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    duplicates: list[tuple[Path_, int]] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, duplicates)
    return YamlDoc(data, lines, tuple(duplicates))


def _walk(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], dups: list[tuple[Path_, int]]
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = (*path, key)
            if key in seen:
                dups.append((here, key_node.start_mark.line + 1))
            seen.add(key)
            lines[here] = key_node.start_mark.line + 1
            _walk(value_node, here, lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, str(index))] = item.start_mark.line + 1
            _walk(item, (*path, str(index)), lines, dups)

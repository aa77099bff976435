"""Parse YAML with PyYAML's node API so every key keeps its line number, within fixed bounds.

A config file is small; a hostile one must not cost more than a small one. ``load_yaml``
refuses, as a ``yaml.YAMLError`` naming the line, what PyYAML would otherwise turn into a
traceback, a hang or an out-of-memory: aliases that expand past ``MAX_NODES`` nodes (a
"billion laughs" of a few hundred bytes), an alias inside its own anchor, nesting deeper than
``MAX_DEPTH``, integers longer than ``MAX_INT_DIGITS`` digits and scalars such as
``2024-02-30`` that PyYAML's constructors cannot build.

>>> doc = load_yaml("a: 1\\nb:\\n  c: 2\\n")
>>> doc.data, doc.line("b", "c")
({'a': 1, 'b': {'c': 2}}, 3)
>>> try:
...     load_yaml("a: &x [*x]")
... except YamlTooComplex as err:
...     print(err.problem)
an alias refers to its own anchor (a recursive structure)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml
from yaml.constructor import ConstructorError

Path_ = tuple[str, ...]
MAX_DEPTH = 64  # TorchServe's own configs nest three levels
MAX_NODES = 100_000  # nodes after alias expansion
MAX_INT_DIGITS = 4000  # Python refuses to convert more than 4300 digits


class YamlTooComplex(yaml.MarkedYAMLError):
    """The document is beyond what ``load_yaml`` reads: too deep, too large once expanded."""


@dataclasses.dataclass(frozen=True)
class YamlDoc:
    """The parsed data, the line of each key path, and keys written twice."""

    data: Any
    lines: dict[Path_, int]
    duplicates: tuple[tuple[Path_, int], ...]

    def line(self, *path: str) -> int | None:
        return self.lines.get(tuple(path))


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth bound while composing and no raw constructor errors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlTooComplex(problem=f"nested deeper than {MAX_DEPTH} levels",
                                     problem_mark=mark)  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as err:  # e.g. a date 2024-02-30
            raise ConstructorError(
                None, None, f"cannot read this {node.tag} value: {err}", node.start_mark
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(
                None,
                None,
                f"an integer of {digits} digits: more than any TorchServe setting holds "
                f"(a Java long has 19) and than this reader converts ({MAX_INT_DIGITS})",
                node.start_mark,
            )
        return int(super().construct_yaml_int(node))


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def load_yaml(text: str) -> YamlDoc:
    """Parse ``text``; raises ``yaml.YAMLError`` (with ``problem_mark``) when malformed."""
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    duplicates: list[tuple[Path_, int]] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, duplicates)
    return YamlDoc(data, lines, tuple(duplicates))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that is cyclic, or too large or deep once its aliases are expanded.

    Iterative, each distinct node visited once: the check itself costs what the file costs.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise YamlTooComplex(
                    problem=f"aliases expand this to more than {MAX_NODES} values (an alias bomb?)",
                    problem_mark=node.start_mark,
                )
            if height[key] > MAX_DEPTH:
                raise YamlTooComplex(
                    problem=f"aliases nest this deeper than {MAX_DEPTH} levels",
                    problem_mark=node.start_mark,
                )
        elif key in on_path:
            raise YamlTooComplex(
                problem="an alias refers to its own anchor (a recursive structure)",
                problem_mark=node.start_mark,
            )
        elif key not in size:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


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

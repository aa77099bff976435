"""Parse YAML with PyYAML's node API so every key keeps its line number, within fixed bounds.

A config file is small; a hostile one must not cost more than a small one. ``load_yaml``
refuses, as a ``yaml.YAMLError`` naming the line, what PyYAML would otherwise turn into a
traceback, a hang or an out-of-memory: aliases that expand past ``MAX_NODES`` nodes (a
"billion laughs" of a few hundred bytes), an alias inside its own anchor, nesting deeper than
``MAX_DEPTH``, more than ``MAX_NODES`` values, integers of more than ``MAX_INT_BITS`` bits
(in any YAML form: decimal, ``0x``, ``0o``/``0``, ``0b``, base 60; sized before converting)
and scalars such as ``2024-02-30`` that PyYAML's constructors cannot build. Mapping keys
that are not strings (``1:``, ``2024-01-01:``, ``null:``) are listed in ``YamlDoc.odd_keys``.

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
import math
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent

from servekit.config.limits import MAX_INT_BITS
from servekit.runtime.decoding import MAX_INT_DIGITS

Path_ = tuple[str, ...]
MAX_DEPTH = 64  # TorchServe's own configs nest three levels
MAX_NODES = 100_000  # values in the file, and after alias expansion
STR_TAG = "tag:yaml.org,2002:str"


class YamlTooComplex(yaml.MarkedYAMLError):
    """The document is beyond what ``load_yaml`` reads: too deep, too large once expanded."""


class YamlTooLarge(YamlTooComplex):
    """The document holds more values than ``MAX_NODES``, aliases aside: not a config file."""


@dataclasses.dataclass(frozen=True)
class YamlDoc:
    """The parsed data, the line of each key path, keys written twice and keys that are not
    strings (each with its path as written, line and YAML type: ``int``, ``timestamp``...)."""

    data: Any
    lines: dict[Path_, int]
    duplicates: tuple[tuple[Path_, int], ...]
    odd_keys: tuple[tuple[Path_, int, str], ...] = ()

    def line(self, *path: str) -> int | None:
        return self.lines.get(tuple(path))


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a depth bound while composing and no raw constructor errors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0  # values composed
        self.aliases = 0  # alias references: each expands to one value or more

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlTooComplex(problem=f"nested deeper than {MAX_DEPTH} levels",
                                     problem_mark=mark)  # fmt: skip
            self._count(self.check_event(AliasEvent))
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _count(self, alias: bool) -> None:
        """Refuse while composing, so a huge file stops here and costs no more than the cap."""
        self.aliases += alias
        self.nodes += not alias
        if self.nodes + self.aliases <= MAX_NODES:
            return
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.nodes > MAX_NODES:
            raise YamlTooLarge(
                problem=f"more than {MAX_NODES} values (a config file holds a few dozen)",
                problem_mark=mark,
            )
        raise YamlTooComplex(
            problem=f"aliases expand this to more than {MAX_NODES} values (an alias bomb?)",
            problem_mark=mark,
        )

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError, IndexError) as err:  # a date 2024-02-30
            raise ConstructorError(
                None, None, f"cannot read this {node.tag} value: {err}", node.start_mark
            ) from None

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        bits = int_bits(str(self.construct_scalar(node)))
        if bits > MAX_INT_BITS:
            raise ConstructorError(None, None, _too_long(bits), node.start_mark)
        value = int(super().construct_yaml_int(node))
        if value.bit_length() > MAX_INT_BITS:  # int_bits is an upper bound; belt and braces
            raise ConstructorError(None, None, _too_long(value.bit_length()), node.start_mark)
        return value


def int_bits(text: str) -> int:
    """An upper bound of the bits of the YAML 1.1 integer ``text``, without converting it.

    >>> int_bits("0x" + "f" * 10), int_bits("-1_000"), int_bits("1:30:00"), int_bits("0b101")
    (40, 14, 29, 3)
    """
    body = text.replace("_", "")
    body = body[1:] if body[:1] in ("-", "+") else body
    if body[:2] in ("0b", "0x"):
        return len(body[2:].lstrip("0")) * (1 if body[1] == "b" else 4)
    if ":" in body:  # base 60: each part at most its decimal bits, times 60 (< 6 bits)
        return sum(_decimal_bits(part) + 6 for part in body.split(":"))
    if body[:1] == "0":
        return 3 * len(body.lstrip("0"))
    return _decimal_bits(body)


def _decimal_bits(digits: str) -> int:
    return math.ceil(len(digits.lstrip("0")) * math.log2(10))


def _too_long(bits: int) -> str:
    digits = math.ceil(bits * math.log10(2))
    return (
        f"an integer of about {digits} digits ({bits} bits): more than any TorchServe setting "
        f"holds (a Java long has 19 digits) and than this reader converts ({MAX_INT_DIGITS})"
    )


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
    odd: list[tuple[Path_, int, str]] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _walk(node, (), lines, duplicates, odd)
    return YamlDoc(data, lines, tuple(duplicates), tuple(odd))


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
    node: yaml.Node,
    path: Path_,
    lines: dict[Path_, int],
    dups: list[tuple[Path_, int]],
    odd: list[tuple[Path_, int, str]],
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
            if key_node.tag != STR_TAG:
                odd.append((here, key_node.start_mark.line + 1, key_node.tag.rpartition(":")[2]))
            _walk(value_node, here, lines, dups, odd)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, str(index))] = item.start_mark.line + 1
            _walk(item, (*path, str(index)), lines, dups, odd)

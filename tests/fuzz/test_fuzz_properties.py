"""The properties parser, for any text: entries or a ``ConfigError``, and what it writes back
reads the same (keys and values escaped as ``java.util.Properties.store`` does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.config.properties import Entry, parse_properties, property_values
from servekit.errors import ConfigError
from servekit.serve.server import read_properties
from tests.fuzz.config_inputs import bounded_memory, mutated, seeds
from tests.fuzz.kept import corpus

pytestmark = pytest.mark.timeout(300)
PROPERTIES_TEXT = st.text(st.characters(exclude_categories=()), max_size=300) | mutated(
    seeds(".properties")
).map(lambda b: b.decode("iso-8859-1"))


def parse(text: str) -> list[Entry] | None:
    with bounded_memory():
        try:
            return parse_properties(text)
        except ConfigError as err:
            assert "line " in str(err)
            return None


@given(text=PROPERTIES_TEXT)
@example(text="a\\" + "\\" * 100_000)
@example(text="k=\\u12")
@example(text="\\ud800=\\udfff")
@example(text=" " * 100_000 + "=")
@example(text="a=b\\\n" * 10_000)
def test_parser_keeps_its_promise(text: str) -> None:
    entries = parse(text)
    if entries is not None:
        assert all(isinstance(e.key, str) and isinstance(e.value, str) for e in entries)
        assert all(1 <= e.line <= text.count("\n") + text.count("\r") + 1 for e in entries)


def escape(text: str, is_key: bool) -> str:
    """As ``Properties.store`` writes it (without ``\\uXXXX`` for non-ASCII)."""
    out = []
    for index, char in enumerate(text):
        if char in "\\=:#!" or (char == " " and (is_key or index == 0)):
            out.append("\\" + char)
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        else:
            out.append(char)
    return "".join(out)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(max_size=40)), max_size=8))
def test_what_is_written_escaped_reads_back(pairs: list[tuple[str, str]]) -> None:
    text = "".join(f"{escape(k, True)}={escape(v, False)}\n" for k, v in pairs)
    assert [(e.key, e.value) for e in parse_properties(text)] == pairs


@pytest.mark.parametrize("kept", corpus("properties"), ids=lambda p: p.name)
def test_kept_inputs(kept: Path) -> None:
    parse(kept.read_bytes().decode("iso-8859-1"))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(max_size=40)), max_size=8))
def test_the_servers_reader_is_the_validators_parser(pairs: list[tuple[str, str]]) -> None:
    # read_properties (the TorchServe runner's) and the validator read every file alike:
    # a repeated key keeps its last value, as java.util.Properties does.
    text = "".join(f"{escape(k, True)}={escape(v, False)}\n" for k, v in pairs)
    assert read_properties(text) == property_values(text) == dict(pairs)

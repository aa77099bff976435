"""The schema is the one source of truth: docs generated from it, parsers that match Java."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servekit.config import schema
from servekit.config.findings import CODES
from servekit.config.properties import parse_properties, property_values
from servekit.config.schema_docs import render
from servekit.errors import ConfigError
from servekit.serve.server import read_properties

ROOT = Path(__file__).resolve().parent.parent.parent


def test_committed_docs_are_up_to_date() -> None:
    committed = (ROOT / "docs" / "config-keys.md").read_text()
    assert committed == render(), "run `make config-docs` and commit docs/config-keys.md"
    done = subprocess.run(
        [sys.executable, "-m", "servekit.cli", "config-docs", "--check", "--project", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_every_key_has_a_kind_and_meaning() -> None:
    for table in schema.TABLES.values():
        for name, key in table.items():
            assert key.name == name and key.meaning and key.allowed()


def test_docs_list_every_key_and_code() -> None:
    text = render()
    for table in schema.TABLES.values():
        for name in table:
            assert f"| `{name}` |" in text
    for code in CODES:
        assert f"| `{code}` |" in text


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("a=1\nb = 2\nc:3\nd 4\n", [("a", "1", 1), ("b", "2", 2), ("c", "3", 3), ("d", "4", 4)]),
        ("# c\n! c\n\n  k=v", [("k", "v", 4)]),
        ("k=a \\\n   b\\\n c\n", [("k", "a bc", 1)]),
        ("k=trailing  \n", [("k", "trailing  ", 1)]),
        ("k\\=x=1\n", [("k=x", "1", 1)]),
        ("k=tab\\tend \\u0041\n", [("k", "tab\tend A", 1)]),
        ("k=\n", [("k", "", 1)]),
        ("# comment ending in backslash \\\nk=v\n", [("k", "v", 2)]),
        ("k=v\\\\\nx=y\n", [("k", "v\\", 1), ("x", "y", 2)]),
    ],
)
def test_properties_parse_like_java(text: str, entries: list[tuple[str, str, int]]) -> None:
    assert [(e.key, e.value, e.line) for e in parse_properties(text)] == entries


def test_bad_unicode_escape_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"line 2: malformed \\uxxxx escape"):
        parse_properties("a=1\nb=\\u12zz\n")


def test_the_server_reads_properties_with_the_validators_parser() -> None:
    # Lines the old line-splitting reader got wrong: ':' and blank separators, continuations,
    # escapes; a repeated key keeps its last value, as Java's Properties does.
    text = "a : 1\nb 2\nvmargs=-Xmx1g \\\n  -Xss1m\nk\\=x=y\na=3\n"
    expected = {"a": "3", "b": "2", "vmargs": "-Xmx1g -Xss1m", "k=x": "y"}
    assert property_values(text) == read_properties(text) == expected
    assert read_properties((ROOT / "config.properties").read_text(encoding="iso-8859-1")) == {
        e.key: e.value
        for e in parse_properties((ROOT / "config.properties").read_text(encoding="iso-8859-1"))
    }

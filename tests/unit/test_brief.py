"""One way to shorten a value for a message (``servekit.runtime.decoding.brief``), one
``MAX_INT_DIGITS``, and findings built with keywords only."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from servekit.config import limits
from servekit.config.findings import ERROR, Finding, jsonable, show
from servekit.queue.messages import shown
from servekit.runtime import decoding
from servekit.runtime.decoding import MAX_INT_DIGITS, brief, cut


def test_one_integer_limit_everywhere() -> None:
    package = Path(decoding.__file__).parent.parent
    defined = [p for p in package.rglob("*.py") if "MAX_INT_DIGITS = " in p.read_text()]
    assert defined == [Path(decoding.__file__)]
    assert len(str(2**limits.MAX_INT_BITS - 1)) <= MAX_INT_DIGITS  # the config cap prints
    assert sys.get_int_max_str_digits() >= MAX_INT_DIGITS


@pytest.mark.parametrize(
    "value, text",
    [
        (10**400, "an integer of 401 digits"),
        (10**4000, "an integer of about 4000 digits"),
        (2**20000, "an integer of about 6020 digits"),
        ([1] * 100, "a JSON array of 100 items"),
        ({str(i): i for i in range(50)}, "a JSON object of 50 items"),
        ([1, "a"], "[1, 'a']"),
        (True, "True"),
        ("x" * 50, "'" + "x" * 36 + "..."),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else type(v).__name__,
)
def test_brief_default_is_a_short_repr(value: object, text: str) -> None:
    assert brief(value) == text and len(brief(value)) <= decoding.BRIEF_CHARS


@pytest.mark.parametrize(
    "value, text",
    [
        ("4", "'4'"),
        ("", "''"),
        (" a", "' a'"),
        ("auto", "auto"),
        (None, "null"),
        (False, "false"),
        (1.5, "1.5"),
        (float("nan"), "nan"),
        ({"a": 1}, "{'a': 1}"),
        ([0] * 1000, "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...]"),
        (["x" * 50] * 1000, "a list of 1000 items"),
        ({str(i) * 20: i for i in range(1000)}, "a mapping of 1000 items"),
    ],
)
def test_brief_written_shows_the_type_as_a_config_file_writes_it(value: object, text: str) -> None:
    assert show(value) == brief(value, 200, written=True, length=True) == text


def test_the_three_uses_cut_the_same_way() -> None:
    assert shown("m" * 100_000) == "'" + "m" * 76 + "... (100002 characters)"
    assert show("m" * 1000) == "m" * 197 + "... (1000 characters)"
    assert brief("m" * 1000).endswith("...") and len(brief("m" * 1000)) == 40
    assert cut("abc", 2) == "a..." and cut("abc", 3) == "abc"


def test_huge_ints_inside_containers_are_never_printed() -> None:
    huge = 2**20000
    for text in (brief([huge]), show({"a": huge}), shown((huge,)), str(jsonable([huge]))):
        assert "about 6020 digits" in text


def test_finding_is_built_with_keywords_only() -> None:
    fields = dict(
        severity=ERROR, code="bad-value", file="f.yml", line=1, key="k", value="v",
        expected="e", fix="x", problem="p",
    )  # fmt: skip
    finding = Finding(**fields)  # type: ignore[arg-type]
    assert dataclasses.asdict(finding) == fields
    with pytest.raises(TypeError, match="positional"):
        Finding(*fields.values())  # type: ignore[call-arg]  # mypy refuses it too

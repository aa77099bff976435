"""The drain marker (``servekit.runtime.draining``) under fuzzing: every worker reads it before
every batch while its server drains, and it is a file any process of the user could write.

The promise, for any bytes: ``None`` or a ``Marker`` whose phase is ``announce`` or
``refuse``, ``retry_after`` an int from 0 to 3600, and an allowance of non-negative ints
(never a bool); a well-formed marker round-trips; never an exception.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.runtime.draining import PHASES, Marker

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=16,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.sampled_from([*PHASES, "stop", ""]) | json_values,
        "retry_after": json_values,
        "allowance": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values,
        "drainer": json_values,
        "drainer_started": json_values,
        "frontend_started": json_values,
    },
)


def check(marker: Marker | None) -> None:
    if marker is None:
        return
    assert marker.phase in PHASES
    assert type(marker.retry_after) is int and 0 <= marker.retry_after <= 3600
    assert all(type(v) is int and v >= 0 for v in marker.allowance.values())
    assert type(marker.drainer) is int and marker.drainer >= 0
    for started in (marker.drainer_started, marker.frontend_started):
        assert type(started) is float and math.isfinite(started) and started >= 0
    assert Marker.parse(marker.to_json()) == marker


@given(st.binary(max_size=300))
@example(b'{"phase": "refuse", "retry_after": 1e400}')
@example(b"[" * 100_000)
def test_any_bytes(data: bytes) -> None:
    check(Marker.parse(data.decode("utf-8", "replace")))


@given(documents)
def test_any_document(document: dict) -> None:  # type: ignore[type-arg]
    try:
        text = json.dumps(document)
    except ValueError:
        return
    check(Marker.parse(text))


times = st.floats(0, 4e9, allow_nan=False, allow_infinity=False)


@given(
    st.sampled_from(PHASES),
    st.integers(0, 3600),
    st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 10**9), max_size=5),
    st.integers(0, 2**31),
    times,
    times,
)
def test_well_formed_markers_round_trip(  # type: ignore[type-arg]
    phase: str, retry: int, allowance: dict, drainer: int, drainer_at: float, frontend_at: float
) -> None:
    marker = Marker(phase, retry, allowance, drainer, drainer_at, frontend_at)
    assert Marker.parse(marker.to_json()) == marker

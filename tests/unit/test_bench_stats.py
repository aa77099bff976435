"""servekit.bench.stats: the one percentile definition, pinned on small known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servekit.bench.stats import Percentiles, percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([10.0, 20.0, 30.0, 40.0], 50, 25.0),  # between the two middle values
        ([10.0, 20.0, 30.0, 40.0], 0, 10.0),
        ([10.0, 20.0, 30.0, 40.0], 100, 40.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),  # nearest rank would say 5
        ([1.0, 2.0, 3.0, 4.0, 5.0], 25, 2.0),
        ([1.0, 2.0], 95, 1.95),
        ([7.0], 99, 7.0),
    ],
)
def test_percentile_interpolates_between_closest_ranks(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_one_to_a_hundred() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0


def test_no_values_is_nan_and_a_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile([1.0], 101)


def test_summarize_sorts_and_reports_every_figure() -> None:
    assert summarize([4.0, 1.0, 3.0, 2.0]) == Percentiles(
        p50=2.5, p95=pytest.approx(3.85), p99=pytest.approx(3.97), max=4.0, mean=2.5
    )
    empty = summarize([])
    assert all(math.isnan(v) for v in (empty.p50, empty.p95, empty.p99, empty.max, empty.mean))


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200),
    st.floats(0, 100),
)
def test_percentile_matches_numpy_and_stays_within_the_values(
    values: list[float], q: float
) -> None:
    ordered = sorted(values)
    found = percentile(ordered, q)
    assert ordered[0] <= found <= ordered[-1]
    assert found == pytest.approx(float(np.percentile(ordered, q)), rel=1e-9, abs=1e-9)

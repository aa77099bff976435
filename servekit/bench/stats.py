"""The one percentile of every benchmark: linear interpolation between closest ranks.

The same definition as ``numpy.percentile``'s default (and Excel's ``PERCENTILE.INC``): the
``q``-th percentile of ``n`` sorted values sits at position ``(n - 1) * q / 100``, between
two values when that is not a whole number. Every benchmark, the tuner and the reports use
:func:`percentile` or :func:`summarize`, so a p95 means the same in every results file.

    >>> percentile([10.0, 20.0, 30.0, 40.0], 50)
    25.0
    >>> summarize([5.0, 1.0, 3.0]).p50
    3.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Percentiles:
    """Latency figures of one run, in the unit of the values given (ms in results files)."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending ``sorted_values``; NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(values: Iterable[float]) -> Percentiles:
    """p50, p95, p99, max and mean of ``values`` (any order; NaN throughout when empty)."""
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered) if ordered else math.nan
    top = ordered[-1] if ordered else math.nan
    p50, p95, p99 = (percentile(ordered, q) for q in (50, 95, 99))
    return Percentiles(p50=p50, p95=p95, p99=p99, max=top, mean=mean)

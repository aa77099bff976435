"""Property-based tests of every parser of untrusted input: its promise, for any bytes.

Each target states what may come out (a result, a ``RequestError``, a finding, a clean
error exit) and that nothing else does. Two budgets, chosen by ``HYPOTHESIS_PROFILE``:

- ``ci`` (the default, what ``make test`` runs): a fixed, derandomized set of examples per
  target, so a run is repeatable and the whole directory stays around a minute;
- ``fuzz`` (``make fuzz``): many random examples per target, for hunting new crashes.

A crash found either way stays: as an ``@example`` on its property, or a file in
``tests/corpus/fuzz/<target>/`` that the target replays.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "3000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory is a fuzz target (``make fuzz`` selects them with -m fuzz)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.fuzz)

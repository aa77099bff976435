"""Moved to servekit/bench/closed_loop.py (``servekit bench-drain`` uses it too); this name
stays until every test imports it from there."""

from servekit.bench.closed_loop import *  # noqa: F403
from servekit.bench.closed_loop import (  # noqa: F401
    ANSWERED,
    CONNECT_REFUSED,
    CUT,
    REFUSED_503,
    TIMEOUT,
    ClosedLoop,
    Outcome,
)

"""What ``degraded`` means, and how a handler leaves it without any traffic.

A client's input never moves readiness: a request it can send is answered, 4xx when the
input is at fault, but internal errors (5xx) only *raise the question*. After
``degraded_after_errors`` of them in a row the handler asks its model the handler's own
known-good inputs (its warmup items): if the model answers them, the failures belonged to
those inputs and the count starts again; if it fails them too (weights gone bad, out of
memory, a lost device), the handler is ``degraded``. While degraded, the customized
describe that readiness probes send re-runs that self-test, at most once per
``recheck_seconds``, and the first pass makes the handler ``ready`` again: recovery needs
no traffic, and no client request can bring a broken model back to ``ready`` either.

A handler without warmup items cannot tell the model's fault from the input's: it
reports its failures but never becomes degraded by them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SelfTest = Callable[[], BaseException | None]


@dataclass
class Readiness:
    """One worker's verdict on its model; ``record`` after each batch, ``recheck`` on describe."""

    degraded_after: int = 5
    recheck_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    failures_in_a_row: int = 0
    failing: str | None = None
    tested_at: float = field(default=-math.inf)
    self_tests: int = 0

    @property
    def degraded(self) -> bool:
        return self.failing is not None

    def record(self, statuses: Iterable[int], self_test: SelfTest) -> None:
        """Count internal errors in a row (client errors never count); test when they pile up."""
        for code in statuses:
            if code >= 500 and code != 503:  # 503: a full batch or queue, not a failure
                self.failures_in_a_row += 1
            elif code < 400:
                self.failures_in_a_row = 0
        if self.degraded:
            self.recheck(self_test)
        elif self.degraded_after and self.failures_in_a_row >= self.degraded_after:
            self._test(self_test)

    def recheck(self, self_test: SelfTest) -> None:
        """While degraded, run the self-test again once ``recheck_seconds`` have passed."""
        if self.degraded:
            self._test(self_test)

    def fail(self, err: BaseException) -> None:
        """The model failed its known-good inputs outside a self-test (a background warmup)."""
        self.failing = _reason(err)
        self.tested_at = self.clock()

    def as_dict(self) -> dict[str, Any]:
        return {
            "failing": self.failing,
            "self_tests": self.self_tests,
            "recheck_seconds": self.recheck_seconds,
        }

    def _test(self, self_test: SelfTest) -> None:
        if self.clock() - self.tested_at < self.recheck_seconds:
            return  # at most one self-test per interval, however many errors arrive
        self.tested_at = self.clock()
        self.self_tests += 1
        err = self_test()
        if err is None:
            self.failing = None
            self.failures_in_a_row = 0
        else:
            self.failing = _reason(err)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__} on the handler's own warmup inputs"

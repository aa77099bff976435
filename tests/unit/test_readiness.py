"""``servekit.runtime.readiness``: 4xx never count, 5xx ask the self-test, rechecks are paced."""

from __future__ import annotations

from servekit.runtime.readiness import Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SelfTest:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.runs = 0

    def __call__(self) -> BaseException | None:
        self.runs += 1
        return self.error


def test_client_errors_never_count() -> None:
    readiness, test = Readiness(degraded_after=2), SelfTest()
    readiness.record([400, 413, 415] * 10, test)
    assert readiness.failures_in_a_row == 0 and test.runs == 0 and not readiness.degraded


def test_internal_errors_ask_the_self_test_which_decides() -> None:
    readiness, test = Readiness(degraded_after=3, clock=Clock()), SelfTest()
    readiness.record([500, 500], test)
    assert test.runs == 0
    readiness.record([500], test)
    assert test.runs == 1 and not readiness.degraded and readiness.failures_in_a_row == 0


def test_a_failed_self_test_degrades_and_only_a_passing_one_recovers() -> None:
    clock, test = Clock(), SelfTest()
    readiness = Readiness(degraded_after=1, recheck_seconds=10, clock=clock)
    test.error = RuntimeError("gone")
    readiness.record([500], test)
    assert readiness.failing == "RuntimeError on the handler's own warmup inputs"
    test.error = None
    readiness.record([200, 200], test)  # a client success is no proof: too soon to recheck
    readiness.recheck(test)
    assert readiness.degraded and test.runs == 1
    clock.now += 10
    readiness.recheck(test)
    assert not readiness.degraded and test.runs == 2


def test_self_tests_are_paced_however_many_errors_arrive() -> None:
    clock, test = Clock(), SelfTest()
    readiness = Readiness(degraded_after=1, recheck_seconds=5, clock=clock)
    for _ in range(100):
        readiness.record([500], test)
    assert test.runs == 1
    clock.now += 5
    readiness.record([500], test)
    assert test.runs == 2


def test_zero_turns_it_off() -> None:
    readiness, test = Readiness(degraded_after=0), SelfTest()
    readiness.record([500] * 50, test)
    assert test.runs == 0 and not readiness.degraded and readiness.failures_in_a_row == 50


def test_a_failed_background_warmup_is_degraded_until_a_self_test_passes() -> None:
    clock, test = Clock(), SelfTest()
    readiness = Readiness(recheck_seconds=1, clock=clock)
    readiness.fail(MemoryError())
    assert readiness.failing == "MemoryError on the handler's own warmup inputs"
    clock.now += 1
    readiness.recheck(test)
    assert not readiness.degraded

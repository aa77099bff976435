"""The tuner's searches on a recorded landscape (the real measure is in tests/e2e/test_tune.py)."""

from __future__ import annotations

import itertools

import pytest

from servekit.bench import search as tuner
from servekit.bench.search import Level, Objective, Search, Space
from servekit.errors import ConfigError
from servekit.serve.settings import Setting

SPACE = Space((1, 2, 4, 8, 16, 32), (5, 10, 20, 50), (1, 2))
OBJECTIVE = Objective(p95_ms=100, max_concurrency=64)


def capacity(s: Setting) -> float:
    """As measured on 2 cores: one worker peaks at batch 8; two workers of one thread each
    peak higher at batch 4, and are worse than one worker at batch 8 and above, so one step
    along the workers axis from the one-worker peak looks like a loss."""
    one = {1: 60, 2: 80, 4: 110, 8: 140, 16: 120, 32: 90}
    two = {1: 90, 2: 145, 4: 160, 8: 130, 16: 100, 32: 70}
    batch = (one if s.workers == 1 else two)[s.batch_size]
    delay = {5: 1.0, 10: 1.05, 20: 0.95, 50: 0.8}[s.max_batch_delay]
    return batch * delay


class Landscape:
    """A server whose throughput saturates at ``capacity``; latency by Little's law."""

    def __init__(self) -> None:
        self.calls: list[tuple[Setting, int]] = []
        self.clock = itertools.count()

    def __call__(self, setting: Setting, concurrency: int) -> Level:
        self.calls.append((setting, concurrency))
        rate = min(concurrency * 20.0, capacity(setting))
        return Level(concurrency, rate, 1000 * concurrency / rate * 1.2)

    def time(self) -> float:
        return float(next(self.clock))  # one "second" per clock read


def search(landscape: Landscape) -> Search:
    return Search(landscape, OBJECTIVE, clock=landscape.time)


def test_levels_step_by_about_one_and_a_half_up_to_the_maximum() -> None:
    assert Objective(100, 64).levels == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert Objective(100, 40).levels == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40]
    assert Objective(100, 1).levels == [1]


def test_a_level_with_errors_or_503s_never_meets_the_objective() -> None:
    assert Level(8, 100, 50).meets(OBJECTIVE)
    assert not Level(8, 100, 150).meets(OBJECTIVE)
    assert not Level(8, 100, 50, errors=1).meets(OBJECTIVE)
    assert not Level(8, 100, 50, count_503=3).meets(OBJECTIVE)


def test_ramp_climbs_until_the_objective_fails_and_scores_the_best_passing_level() -> None:
    landscape = Landscape()
    setting = Setting(8, 10, 1)  # capacity 147: c=8 gives 147 req/s at 65 ms, c=12 no more
    levels = tuner.ramp(landscape, setting, OBJECTIVE)
    assert [lv.concurrency for lv in levels] == [1, 2, 3, 4, 6, 8, 12]
    trial = tuner.Trial(setting, levels, OBJECTIVE)
    assert trial.best is not None and trial.best.concurrency == 8
    assert trial.score == pytest.approx(147.0)


def test_ramp_stops_when_doubling_the_concurrency_no_longer_pays() -> None:
    def flat(setting: Setting, concurrency: int) -> Level:
        return Level(concurrency, 50.0, 10.0)  # saturated from the start, latency fine

    levels = tuner.ramp(flat, Setting(1, 5, 1), OBJECTIVE)
    assert [lv.concurrency for lv in levels] == [1, 2]


def test_ramp_from_a_failing_start_walks_down_to_a_passing_level() -> None:
    landscape = Landscape()
    levels = tuner.ramp(landscape, Setting(8, 10, 1), OBJECTIVE, start=32)
    assert [lv.concurrency for lv in levels] == [12, 16, 24, 32]  # p95 98 ms at 12
    assert tuner.Trial(Setting(8, 10, 1), levels, OBJECTIVE).best == levels[0]


def test_a_setting_that_never_meets_the_objective_scores_zero() -> None:
    strict = Objective(p95_ms=1)
    landscape = Landscape()
    trial = Search(landscape, strict, clock=landscape.time).trial(Setting(4, 5, 1), start=4)
    assert trial.best is None and trial.score == 0.0
    assert [lv.concurrency for lv in trial.levels] == [1, 2, 3, 4]


def test_grid_tries_every_setting_once_workers_slowest() -> None:
    landscape = Landscape()
    full = search(landscape)
    best = tuner.grid(full, SPACE)
    assert [t.setting for t in full.trials] == list(SPACE.settings())
    assert len(full.trials) == len(SPACE) == 48
    assert [t.setting for t in full.trials][:2] == [Setting(1, 5, 1), Setting(1, 10, 1)]
    assert [t.setting.workers for t in full.trials] == [1] * 24 + [2] * 24
    assert best is not None and best.setting == Setting(4, 10, 2)


@pytest.mark.parametrize(
    "start", [Setting(8, 20, 1), Setting(1, 5, 2), Setting(32, 50, 2), Setting(16, 10, 1)]
)
def test_hill_climb_reaches_the_grid_best_with_far_fewer_measurements(start: Setting) -> None:
    climbing, gridding = Landscape(), Landscape()
    climb, full = search(climbing), search(gridding)
    found = tuner.hill_climb(climb, SPACE, start)
    best = tuner.grid(full, SPACE)
    assert found is not None and best is not None
    assert found.setting == best.setting
    retrials = [t for t in climb.trials if t.retrial]
    assert len(retrials) == 2  # the two best measured once more
    assert len({t.setting for t in climb.trials}) == len(climb.trials) - 2
    assert len(climbing.calls) * 3 <= len(gridding.calls)


def test_hill_climb_starts_its_ramps_where_the_incumbent_peaked() -> None:
    landscape = Landscape()
    climb = search(landscape)
    tuner.hill_climb(climb, SPACE, Setting(8, 10, 1))
    first, second = climb.trials[0], climb.trials[1]
    assert first.best is not None
    assert second.levels[0].concurrency in (first.best.concurrency, first.best.concurrency // 2)


def test_search_does_not_measure_a_setting_twice() -> None:
    landscape = Landscape()
    runs = search(landscape)
    one = runs.trial(Setting(4, 5, 1))
    calls = len(landscape.calls)
    assert runs.trial(Setting(4, 5, 1)) is one and len(landscape.calls) == calls


def test_neighbours_are_one_step_along_one_axis() -> None:
    found = {s for _, s in SPACE.neighbours(Setting(1, 5, 1))}
    assert found == {Setting(2, 5, 1), Setting(1, 10, 1), Setting(1, 5, 2)}
    assert len(SPACE.neighbours(Setting(8, 10, 1))) == 5


def test_a_climb_along_the_workers_axis_alone_would_miss_the_two_worker_peak() -> None:
    one_peak = Setting(8, 10, 1)
    assert capacity(Setting(8, 10, 2)) < capacity(one_peak) < capacity(Setting(4, 10, 2))
    climb = search(Landscape())
    found = tuner.hill_climb(climb, SPACE, Setting(16, 10, 1))
    assert found is not None and found.setting == Setting(4, 10, 2)
    first_two_worker = next(t.setting for t in climb.trials if t.setting.workers == 2)
    assert first_two_worker == Setting(4, 10, 2)  # batch 8 from one worker, halved


@pytest.mark.parametrize(
    "axes, message",
    [
        (((4, 2), (5,), (1,)), "batch_sizes [4, 2]: give distinct values, ascending"),
        (((1,), (5, 5), (1,)), "delays [5, 5]: give distinct values, ascending"),
        (((0, 1), (5,), (1,)), "batch sizes and workers must be >= 1; got 0"),
        (((1,), (-1, 5), (1,)), "delays must be >= 0 ms; got [-1, 5]"),
        (((1,), (5,), ()), "workers []: give distinct values, ascending"),
    ],
)
def test_a_bad_space_is_refused_with_the_axis_named(axes: tuple, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Space(*axes)
    assert str(err.value) == message


def test_a_bad_objective_is_refused() -> None:
    with pytest.raises(ConfigError, match="p95 objective is 0 ms"):
        Objective(0)
    with pytest.raises(ConfigError, match="max concurrency is 0"):
        Objective(100, 0)


def test_a_bad_setting_names_the_field() -> None:
    with pytest.raises(ConfigError, match="batch_size is 0; it must be an integer >= 1"):
        Setting(0, 5, 1)
    with pytest.raises(ConfigError, match="max_batch_delay is -1"):
        Setting(1, -1, 1)
    with pytest.raises(ConfigError, match="workers is True"):
        Setting(1, 5, True)
    assert Setting(8, 10, 2).model_config() == {
        "batchSize": 8,
        "maxBatchDelay": 10,
        "minWorkers": 2,
        "maxWorkers": 2,
    }


def test_the_best_setting_is_ranked_by_its_mean_score_not_one_lucky_run() -> None:
    runs = iter([300.0, 100.0])  # setting A: one lucky run, then a normal one

    def noisy(setting: Setting, concurrency: int) -> Level:
        rate = next(runs) if setting.batch_size == 4 else 150.0
        return Level(concurrency, rate, 10.0)

    flat = Objective(p95_ms=100, max_concurrency=1)
    search = Search(noisy, flat)
    a, b = Setting(4, 5, 1), Setting(8, 5, 1)
    search.trial(a), search.trial(b)
    assert search.best is not None and search.best.setting == a  # 300 > 150
    search.retrial(a)
    assert search.mean_score(a) == 200.0
    search.retrial(b)
    assert search.best.setting == a  # mean 200 > 150
    runs = iter([100.0])
    search.retrial(a)
    assert search.mean_score(a) == 500 / 3 and search.best.setting == a
    assert [t.retrial for t in search.trials] == [False, False, True, True, True]


def test_a_miss_before_the_batches_can_fill_does_not_end_the_ramp() -> None:
    def batching(setting: Setting, concurrency: int) -> Level:
        # half-empty batches wait out the delay: slow until batch_size x workers are in flight
        filled = concurrency >= setting.batch_size * setting.workers
        return Level(concurrency, 20.0 * concurrency, 60.0 if filled else 150.0)

    levels = tuner.ramp(batching, Setting(4, 50, 2), OBJECTIVE, start=2)
    assert [lv.concurrency for lv in levels][:3] == [2, 8, 12]  # 3, 4 and 6 would miss too
    best = tuner.Trial(Setting(4, 50, 2), levels, OBJECTIVE).best
    assert best is not None and best.concurrency >= 8


def test_a_miss_at_the_top_level_ends_a_ramp_whose_batches_never_fill() -> None:
    def slow(setting: Setting, concurrency: int) -> Level:
        return Level(concurrency, 10.0 * concurrency, 150.0)

    levels = tuner.ramp(slow, Setting(32, 50, 4), OBJECTIVE, start=4)  # fills at 128 > 64
    assert [lv.concurrency for lv in levels] == [1, 2, 3, 4, 64]


@pytest.mark.parametrize(
    "above, score",
    [
        (Level(12, 180.0, 110.0), 170.0),  # halfway to 110 ms: halfway to 180 req/s
        (Level(12, 180.0, 110.0, errors=1), 160.0),  # errors: no credit beyond the level
        (Level(12, 150.0, 110.0), 160.0),  # less goodput above: the passing level stands
        (Level(12, 180.0, 100.0), 180.0),  # meets the objective itself
    ],
)
def test_the_score_is_the_goodput_interpolated_where_the_p95_crosses_the_objective(
    above: Level, score: float
) -> None:
    levels = [Level(4, 100.0, 40.0), Level(8, 160.0, 90.0), above]
    assert tuner.Trial(Setting(4, 5, 1), levels, OBJECTIVE).score == pytest.approx(score)


def test_the_climb_fills_in_the_neighbours_of_its_best_settings() -> None:
    # batch 4 reads low once; first-improvement leaves it for batch 2 and never comes back
    rates = {(4, 10): iter([130.0]), (4, 20): iter([200.0, 200.0])}
    plane = {1: 110.0, 2: 150.0, 4: 140.0, 8: 90.0, 16: 80.0, 32: 70.0}
    delay = {5: 1.0, 10: 1.07, 20: 1.1, 50: 0.9}

    def unlucky(setting: Setting, concurrency: int) -> Level:
        key = (setting.batch_size, setting.max_batch_delay)
        rate = next(rates[key]) if key in rates else plane[key[0]] * delay[key[1]]
        return Level(concurrency, rate, 50.0)

    space = Space((1, 2, 4, 8, 16, 32), (5, 10, 20, 50), (2,))
    climb = Search(unlucky, Objective(100, max_concurrency=1))
    found = tuner.hill_climb(climb, space, Setting(4, 10, 2))
    assert found is not None and found.setting == Setting(4, 20, 2)
    order = [t.setting for t in climb.trials]
    assert order.index(Setting(2, 10, 2)) < order.index(Setting(4, 20, 2))  # left batch 4 first


def test_head_to_head_alternates_the_settings_and_returns_their_means() -> None:
    calls: list[Setting] = []

    def drifting(setting: Setting, concurrency: int) -> Level:
        calls.append(setting)
        return Level(concurrency, 100.0 + len(calls), 50.0)  # the machine gets faster

    a, b = Setting(4, 5, 2), Setting(2, 5, 2)
    judge = Search(drifting, Objective(100, max_concurrency=1))
    means = tuner.head_to_head(judge, {a: 1, b: 1}, rounds=4)
    assert calls == [a, b, b, a, a, b, b, a]
    assert means == {a: pytest.approx(104.5), b: pytest.approx(104.5)}


def test_the_climb_walks_across_a_flat_step_to_a_higher_batch_size() -> None:
    plateau = {32: 86.0, 16: 86.0, 8: 87.0, 4: 170.0, 2: 150.0, 1: 110.0}

    def flat_then_up(setting: Setting, concurrency: int) -> Level:
        return Level(concurrency, plateau[setting.batch_size], 50.0)

    space = Space((1, 2, 4, 8, 16, 32), (5,), (1,))
    climb = Search(flat_then_up, Objective(100, max_concurrency=1))
    found = tuner.hill_climb(climb, space, Setting(32, 5, 1))
    assert found is not None and found.setting == Setting(4, 5, 1)
    without = Search(flat_then_up, Objective(100, max_concurrency=1))
    stuck = tuner._climb_plane(without, space, Setting(32, 5, 1), 1, 0.02, plateau=0)
    assert stuck.setting in (Setting(32, 5, 1), Setting(16, 5, 1))  # what a plain climb finds


def test_the_first_worker_count_scans_batch_sizes_then_delays_until_past_the_peak() -> None:
    climb = search(Landscape())
    tuner.hill_climb(climb, SPACE, Setting(16, 10, 1))
    first = [t.setting for t in climb.trials[:7]]
    # nearest first; 32 (94 req/s) and 4 (116) are 10 % below 8 (147): no 2 or 1
    assert first[:4] == [Setting(b, 10, 1) for b in (16, 8, 32, 4)]
    assert first[4:] == [Setting(8, d, 1) for d in (5, 20, 50)]  # at the line's best batch
    assert Setting(2, 10, 1) not in {t.setting for t in climb.trials}
    assert all(t.setting.workers == 2 for t in climb.trials[7:] if not t.retrial)


def test_a_ramp_that_cannot_reach_the_score_to_beat_does_not_walk_down() -> None:
    landscape = Landscape()  # batch 8, delay 10: 147 req/s at most; p95 98 ms at 12
    levels = tuner.ramp(landscape, Setting(8, 10, 1), OBJECTIVE, start=32, floor=150.0)
    assert [lv.concurrency for lv in levels] == [32]  # misses, and serves < 150 anyway
    walked = tuner.ramp(landscape, Setting(8, 10, 1), OBJECTIVE, start=32, floor=100.0)
    assert [lv.concurrency for lv in walked] == [12, 16, 24, 32]

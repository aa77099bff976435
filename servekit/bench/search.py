"""Search ``batchSize`` x ``maxBatchDelay`` x workers for the best throughput under a p95 objective.

A *trial* serves the model with one :class:`~servekit.serve.settings.Setting` and ramps the
closed-loop concurrency in steps of about 1.5x. The ramp stops at the first level that misses
the objective once ``batch_size x workers`` requests are in flight (below that the batches
cannot fill, so a miss there jumps straight to that level), or once more concurrency adds
less than ``saturation`` throughput. The setting's *score* is the goodput (2xx per second) at
which its p95 reaches the objective: the best level that meets it (no errors, no 503s), or
between that level and the next one, missing on p95 alone, the goodput interpolated at the
objective. Interpolating turns the cliff at the threshold (a level at 99 ms scores, the same
level at 103 ms does not) into a slope, so one noisy p95 no longer decides the ranking.

Two searches share that measure:

* :func:`grid` tries every setting, each ramp from concurrency 1: the reference.
* :func:`hill_climb` climbs batch size and delay for each worker count: from the model's
  archived setting (or the middle of the grid), after a line through the batch sizes and one
  through the delays on that worker count, it moves to the first neighbour (one step
  along one axis) that scores ``min_gain`` better, trying first the direction that paid
  last, and stops when no untried neighbour is better. The next worker count starts from
  the best so far with the batch size scaled down by the worker ratio. Its ramps start at
  the concurrency where the incumbent peaked, so most trials need two or three levels. Then
  it fills in the untried neighbours of its best settings (first-improvement moves on as
  soon as one neighbour looks better, on noise too), measures its best two settings once
  more and ranks them by their mean score: on a shared machine one run can be 10-20 % off.

:func:`head_to_head` measures settings in alternation, to compare two searches' winners
under the same conditions rather than one run of each.

The measure is a callable, so the searches run as well on a real TorchServe
(:class:`servekit.bench.trials.ServedTrials`) as on a recorded landscape in the unit tests.
This module is the pure search: no HTTP, no servers, no clock it does not get.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from servekit.errors import ConfigError, ToolkitError
from servekit.serve.settings import Setting


@dataclasses.dataclass(frozen=True)
class Objective:
    """Latency objective and the range of concurrency tried."""

    p95_ms: float
    max_concurrency: int = 64
    saturation: float = 0.03

    def __post_init__(self) -> None:
        if not self.p95_ms > 0:
            raise ConfigError(f"p95 objective is {self.p95_ms} ms; give a positive number")
        if self.max_concurrency < 1:
            raise ConfigError(f"max concurrency is {self.max_concurrency}; it must be >= 1")

    @property
    def levels(self) -> list[int]:
        """1, 2, 3, 4, 6, 8, 12, ... (powers of two and halfway) up to ``max_concurrency``.

        Steps of 1.5x rather than 2x: where the p95 crosses the objective the throughput
        still grows, so a coarse ramp leaves a lot of it on the table."""
        found = {1}
        for i in range(int(math.log2(self.max_concurrency)) + 1):
            found |= {2**i, 3 * 2 ** (i - 1)} if i else set()
        levels = sorted(c for c in found if c <= self.max_concurrency)
        return levels if levels[-1] == self.max_concurrency else [*levels, self.max_concurrency]


@dataclasses.dataclass(frozen=True)
class Level:
    """One load level of a trial."""

    concurrency: int
    goodput_rps: float
    p95_ms: float
    errors: int = 0
    count_503: int = 0

    def meets(self, objective: Objective) -> bool:
        return self.p95_ms <= objective.p95_ms and self.errors == 0 and self.count_503 == 0


@dataclasses.dataclass
class Trial:
    """One setting tried: its levels, its score, when it ran and what it cost."""

    setting: Setting
    levels: list[Level]
    objective: Objective
    started_s: float = 0.0
    seconds: float = 0.0
    retrial: bool = False

    @property
    def best(self) -> Level | None:
        passing = [lv for lv in self.levels if lv.meets(self.objective)]
        return max(passing, key=lambda lv: lv.goodput_rps, default=None)

    @property
    def score(self) -> float:
        """Goodput at the objective: the best passing level, or interpolated towards the next."""
        best = self.best
        if best is None:
            return 0.0
        found = best.goodput_rps
        ordered = sorted(self.levels, key=lambda lv: lv.concurrency)
        for low, high in itertools.pairwise(ordered):
            if low.meets(self.objective) and _misses_on_latency_alone(high, low, self.objective):
                share = (self.objective.p95_ms - low.p95_ms) / (high.p95_ms - low.p95_ms)
                found = max(found, low.goodput_rps + share * (high.goodput_rps - low.goodput_rps))
        return round(found, 2)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "retrial": self.retrial,
            "setting": self.setting.to_dict(),
            "label": self.setting.label,
            "score_rps": self.score,
            "best": dataclasses.asdict(best) if best else None,  # the best level measured
            "levels": [dataclasses.asdict(lv) for lv in self.levels],
            "started_s": round(self.started_s, 2),
            "seconds": round(self.seconds, 2),
        }


def _misses_on_latency_alone(level: Level, below: Level, objective: Objective) -> bool:
    """``level`` fails only its p95, and serves more than ``below`` at a higher p95."""
    return (
        level.errors == 0
        and level.count_503 == 0
        and level.p95_ms > objective.p95_ms
        and level.p95_ms > below.p95_ms
        and level.goodput_rps > below.goodput_rps
    )


class Measure(Protocol):
    """Serve ``setting`` (if not already) and run one load level at ``concurrency``."""

    def __call__(self, setting: Setting, concurrency: int) -> Level: ...


@dataclasses.dataclass(frozen=True)
class Space:
    """The grid: every combination of the three axes."""

    batch_sizes: tuple[int, ...]
    delays: tuple[int, ...]
    workers: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "delays", "workers"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise ConfigError(f"{name} {list(values)}: give distinct values, ascending")
        for value in (*self.batch_sizes, *self.workers):
            if value < 1:
                raise ConfigError(f"batch sizes and workers must be >= 1; got {value}")
        if any(d < 0 for d in self.delays):
            raise ConfigError(f"delays must be >= 0 ms; got {list(self.delays)}")

    @property
    def axes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return self.batch_sizes, self.delays, self.workers

    def settings(self) -> Iterator[Setting]:
        """Every setting, workers varying slowest (each worker count has its own server)."""
        for w in self.workers:
            for b in self.batch_sizes:
                for d in self.delays:
                    yield Setting(b, d, w)

    def __len__(self) -> int:
        return len(self.batch_sizes) * len(self.delays) * len(self.workers)

    def index(self, setting: Setting) -> tuple[int, int, int]:
        values = (setting.batch_size, setting.max_batch_delay, setting.workers)
        return tuple(axis.index(v) for axis, v in zip(self.axes, values, strict=True))  # type: ignore[return-value]

    def at(self, index: Sequence[int]) -> Setting:
        b, d, w = (axis[i] for axis, i in zip(self.axes, index, strict=True))
        return Setting(b, d, w)

    def middle(self) -> Setting:
        """Middle batch size and delay, fewest workers: where the climb starts."""
        return self.at((len(self.batch_sizes) // 2, len(self.delays) // 2, 0))

    def neighbours(self, setting: Setting) -> list[tuple[tuple[int, int], Setting]]:
        """``((axis, step), setting)`` one step away along each axis."""
        index = list(self.index(setting))
        found = []
        for axis, values in enumerate(self.axes):
            for step in (1, -1):
                moved = index[axis] + step
                if 0 <= moved < len(values):
                    found.append(
                        ((axis, step), self.at([*index[:axis], moved, *index[axis + 1 :]]))
                    )
        return found


def ramp(
    measure: Measure, setting: Setting, objective: Objective, start: int = 1, floor: float = 0.0
) -> list[Level]:
    """The levels of one trial: up from ``start`` while they pass and pay; down if none passed
    and the levels tried served at least ``floor`` (lower levels serve less: below the score to
    beat, walking down could only find a score that loses anyway).

    Below ``batch_size x workers`` requests in flight the workers' batches cannot fill and
    wait out the delay, so a miss there does not end the climb: it jumps to the first level
    with that many in flight, where the p95 often falls (minilm, batch 8, delay 50, one
    worker: p95 128 ms at 6 in flight, 93 ms at 8); the levels between miss as well."""
    levels = objective.levels
    full = setting.batch_size * setting.workers
    first = max((k for k, c in enumerate(levels) if c <= start), default=0)
    tried: list[Level] = []
    filled = next((k for k, c in enumerate(levels) if c >= full), len(levels) - 1)
    best = 0.0
    k = first
    while k < len(levels):
        level = measure(setting, levels[k])
        tried.append(level)
        if level.meets(objective):
            if best and level.goodput_rps < best * (1 + objective.saturation):
                break  # saturated: more in flight only waits longer
            best = max(best, level.goodput_rps)
        elif k >= filled:
            break
        k = k + 1 if level.meets(objective) else filled
    if not best and max(lv.goodput_rps for lv in tried) >= floor:
        for k in range(first - 1, -1, -1):
            level = measure(setting, levels[k])
            tried.append(level)
            if level.meets(objective):
                break
    return sorted(tried, key=lambda lv: lv.concurrency)


class Search:
    """Runs trials, keeps them in order with their timing, and reports the best so far."""

    def __init__(
        self,
        measure: Measure,
        objective: Objective,
        clock: Callable[[], float] = time.monotonic,
        on_trial: Callable[[Trial], None] | None = None,
    ) -> None:
        self.measure, self.objective, self.clock = measure, objective, clock
        self.on_trial = on_trial
        self.trials: list[Trial] = []
        self.began = clock()
        self.recorded_seconds: float | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], objective: Objective) -> Search:
        """A finished search as ``servekit tune`` wrote it (``trials``, ``seconds``)."""

        def unavailable(setting: Setting, concurrency: int) -> Level:
            raise ToolkitError("a recorded search cannot measure anything new")

        search = cls(unavailable, objective)
        for t in record["trials"]:
            levels = [Level(**lv) for lv in t["levels"]]
            search.trials.append(
                Trial(
                    Setting(**t["setting"]),
                    levels,
                    objective,
                    t["started_s"],
                    t["seconds"],
                    t.get("retrial", False),
                )
            )
        search.recorded_seconds = float(record["seconds"])
        return search

    def trial(self, setting: Setting, start: int = 1, floor: float = 0.0) -> Trial:
        """``setting``'s trial: measured now, or the one already measured."""
        for done in self.trials:
            if done.setting == setting:
                return done
        return self.measure_from(setting, start, floor)

    def retrial(self, setting: Setting) -> Trial:
        """Measure ``setting`` once more, its ramp starting where it peaked the last time."""
        last = [t for t in self.trials if t.setting == setting][-1]
        return self.measure_from(setting, last.best.concurrency if last.best else 1)

    def measure_from(self, setting: Setting, start: int, floor: float = 0.0) -> Trial:
        """A new trial of ``setting``, its ramp starting at concurrency ``start``."""
        started = self.clock()
        levels = ramp(self.measure, setting, self.objective, start, floor)
        again = any(t.setting == setting for t in self.trials)
        trial = Trial(
            setting, levels, self.objective, started - self.began, self.clock() - started, again
        )
        self.trials.append(trial)
        if self.on_trial is not None:
            self.on_trial(trial)
        return trial

    def mean_score(self, setting: Setting) -> float:
        """The mean score of ``setting``'s trials (retrials included)."""
        scores = [t.score for t in self.trials if t.setting == setting]
        return sum(scores) / len(scores) if scores else 0.0

    @property
    def best(self) -> Trial | None:
        """The last trial of the setting with the best mean score."""
        if not self.trials:
            return None
        top = max(dict.fromkeys(t.setting for t in self.trials), key=self.mean_score)
        return [t for t in self.trials if t.setting == top][-1]

    @property
    def elapsed(self) -> float:
        if self.recorded_seconds is not None:
            return self.recorded_seconds
        return self.clock() - self.began


def grid(search: Search, space: Space) -> Trial | None:
    """Every setting of ``space``, each ramped from concurrency 1."""
    for setting in space.settings():
        search.trial(setting)
    return search.best


def hill_climb(
    search: Search,
    space: Space,
    start: Setting | None = None,
    min_gain: float = 0.05,
    confirm: int = 2,
) -> Trial | None:
    """A climb over batch size and delay for each worker count, then the ``confirm`` best
    settings measured once more and ranked by their mean (one lucky run must not win).

    The first worker count's climb starts from the best of a line through the batch sizes,
    then of one through the delays at the best batch (each direction until 10 % past the
    peak): a climb from batch 16 walked to 32 on noise and never saw 8, and the first worker
    count's peak places all the others.
    The worker count is not climbed like the other two axes: with twice the workers each one
    gets half the load and half the threads, so its best batch size moves down. Each further
    worker count's climb therefore starts from the best setting so far with its batch size
    divided by the ratio of worker counts (snapped to the grid).

    ``min_gain`` is 5 %, about the noise of one 3 s level on a shared 2-core machine: with 2 %
    the climb drifted along maxBatchDelay (10 -> 20 -> 50 ms) on noise alone."""
    first = start or space.middle()
    order = sorted(space.workers, key=lambda w: (abs(w - first.workers), w))
    best: Trial | None = None
    for workers in order:
        if best is None:
            origin = Setting(first.batch_size, first.max_batch_delay, workers)
        else:
            scaled = best.setting.batch_size * best.setting.workers / workers
            batch = min(space.batch_sizes, key=lambda b: abs(math.log2(b / scaled)))
            origin = Setting(batch, best.setting.max_batch_delay, workers)
        warm = best.best.concurrency if best is not None and best.best is not None else 4
        if best is None:  # the first worker count: batch sizes, then delays, past the peak
            origin = _scan(search, space, origin, 0, warm, 2 * min_gain).setting
            origin = _scan(search, space, origin, 1, warm, 2 * min_gain).setting
        found = _climb_plane(search, space, origin, warm, min_gain)
        if best is None or found.score > best.score:
            best = found
    _fill_in(search, space, confirm, min_gain)
    for setting in _ranked(search)[:confirm]:
        if search.mean_score(setting) > 0:
            search.retrial(setting)
    return search.best


def _scan(
    search: Search, space: Space, origin: Setting, axis: int, warm: int, drop: float
) -> Trial:
    """The values of ``axis`` (0 batch size, 1 delay) at ``origin``'s other values, nearest
    first, each ramp starting where the last one peaked; the best trial of the line. A
    direction ends at a value ``drop`` below the line's best (the line is one-peaked: past
    the peak it only falls)."""
    index = space.index(origin)
    values = space.axes[axis]
    order = sorted(range(len(values)), key=lambda i: (abs(i - index[axis]), i))
    line: list[Trial] = []
    ended: set[bool] = set()
    for i in order:
        upward = i > index[axis]
        if i != index[axis] and upward in ended:
            continue
        top = max((t.score for t in line), default=0.0)
        setting = space.at([*index[:axis], i, *index[axis + 1 :]])
        line.append(search.trial(setting, start=warm, floor=top * (1 - drop)))
        warm = line[-1].best.concurrency if line[-1].best is not None else warm
        if line[-1].score < max(top, line[-1].score) * (1 - drop):
            ended.add(upward)
    return max(line, key=lambda t: t.score)


def _ranked(search: Search) -> list[Setting]:
    """The settings tried, best mean score first (ties in the order first tried)."""
    tried = dict.fromkeys(t.setting for t in search.trials)
    return sorted(tried, key=search.mean_score, reverse=True)


def _fill_in(search: Search, space: Space, top: int, min_gain: float, rounds: int = 3) -> None:
    """Measure the untried batch-size and delay neighbours of the ``top`` best settings,
    again while that brings a new best (at most ``rounds`` times).

    A first-improvement climb leaves a setting as soon as one neighbour reads better, and
    with 10 % noise per run that neighbour may be the worse one: minilm's climb left batch 4,
    two workers, for batch 2 after one unlucky run and never tried batch 4's other delays."""
    for _ in range(rounds):
        leader = search.best
        for setting in _ranked(search)[:top]:
            peak = [t for t in search.trials if t.setting == setting][-1].best
            for (axis, _step), near in space.neighbours(setting):
                if axis != 2:
                    floor = search.best.score * (1 - min_gain) if search.best else 0.0
                    search.trial(near, start=peak.concurrency if peak else 1, floor=floor)
        if search.best is None or leader is None or search.best.setting == leader.setting:
            return


def head_to_head(
    search: Search, starts: dict[Setting, int], rounds: int = 3
) -> dict[Setting, float]:
    """Each setting measured ``rounds`` times, in alternation (the order reversed every round,
    so neither always runs first), its ramp starting at ``starts[setting]``; their mean scores.

    Comparing one run of one setting with the best of 48 runs of others favours the 48: the
    best of many noisy readings is a lucky one. Side by side, both get the same luck."""
    order = list(starts)
    for r in range(rounds):
        for setting in order if r % 2 == 0 else order[::-1]:
            search.measure_from(setting, starts[setting])
    return {setting: search.mean_score(setting) for setting in order}


def _climb_plane(
    search: Search, space: Space, origin: Setting, warm: int, min_gain: float, plateau: int = 2
) -> Trial:
    """First-improvement climb over batch size and delay at ``origin``'s worker count.

    When no neighbour is ``min_gain`` better but one is about as good (within ``min_gain``),
    the climb walks onto it, at most ``plateau`` times in a row: throughput against batch
    size can be flat for a step before it rises (two workers: batch 16 and 8 alike, 4 twice
    as good). It returns the best trial it saw, not where it stopped."""
    current = best = search.trial(origin, start=warm)
    tried = {current.setting}
    last_move: tuple[int, int] | None = None
    flat_steps = 0
    while True:
        candidates = [
            (move, setting)
            for move, setting in space.neighbours(current.setting)
            if move[0] != 2 and setting not in tried  # axis 2, the workers, is not climbed
        ]
        if last_move is not None:  # the direction that paid last goes first
            candidates.sort(key=lambda ms: ms[0] != last_move)
        warm = current.best.concurrency if current.best is not None else 1
        level: list[tuple[tuple[int, int], Trial]] = []
        for move, setting in candidates:
            tried.add(setting)
            trial = search.trial(setting, start=warm, floor=current.score * (1 - min_gain))
            if trial.score > current.score * (1 + min_gain):
                current, last_move, flat_steps = trial, move, 0
                break
            if move[0] == 0 and trial.score >= current.score * (1 - min_gain):
                level.append((move, trial))  # flat steps along the batch size only
        else:
            if not level or flat_steps >= plateau:
                return max(best, current, key=lambda t: t.score)
            last_move, current = max(level, key=lambda mt: mt[1].score)
            flat_steps += 1
        best = max(best, current, key=lambda t: t.score)

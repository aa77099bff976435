"""The climb replayed on grids recorded on real TorchServe (every level the grid measured).

A replayed level is the grid's reading at that concurrency; above the grid's last level (where
the grid's own ramp stopped) the last reading stands. Time is modelled from the grid's own
costs: per trial, the mean registration and warmup overhead of its trials, plus the levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from servekit.bench import search as tuner
from servekit.bench.search import Level, Objective, Search, Space
from servekit.serve.settings import Setting

ROOT = Path(__file__).resolve().parent.parent.parent
GRIDS = [
    ROOT / "docs" / "bench" / "tune-minilm-grid.json",  # servekit tune --grid, this version
    ROOT / "tests" / "data" / "tune-minilm-grid-earlier.json",  # an earlier version's grid
]


class Recorded:
    def __init__(self, record: dict[str, Any]) -> None:
        self.objective = Objective(
            record["objective"]["p95_ms"], record["objective"]["max_concurrency"]
        )
        space = record["space"]
        self.space = Space(
            tuple(space["batch_sizes"]), tuple(space["delays_ms"]), tuple(space["workers"])
        )
        trials = record["grid"]["trials"]
        self.levels = {
            Setting(**t["setting"]): {lv["concurrency"]: Level(**lv) for lv in t["levels"]}
            for t in trials
        }
        self.level_s = record["level_seconds"] + record["warmups_s"]["level"]
        spent = [t["seconds"] - len(t["levels"]) * self.level_s for t in trials]
        self.overhead = sum(spent) / len(spent)
        self.grid_seconds = float(record["grid"]["seconds"])
        self.seconds, self.current = 0.0, None

    def __call__(self, setting: Setting, concurrency: int) -> Level:
        if setting != self.current:
            self.seconds, self.current = self.seconds + self.overhead, setting
        self.seconds += self.level_s
        levels = self.levels[setting]
        found = levels.get(concurrency) or levels[max(levels)]
        return Level(concurrency, found.goodput_rps, found.p95_ms, found.errors, found.count_503)

    def score(self, setting: Setting) -> float:
        return tuner.Trial(setting, list(self.levels[setting].values()), self.objective).score


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_the_climb_reaches_the_recorded_grids_best_in_a_third_of_its_time(path: Path) -> None:
    grid = Recorded(json.loads(path.read_text()))
    assert len(grid.levels) == len(grid.space) == 48
    climb = Search(grid, grid.objective, clock=lambda: grid.seconds)
    found = tuner.hill_climb(climb, grid.space, Setting(16, 10, 1))
    assert found is not None
    best = max(grid.levels, key=grid.score)
    assert grid.score(found.setting) >= 0.95 * grid.score(best), (found.setting, best)
    assert grid.seconds <= grid.grid_seconds / 3

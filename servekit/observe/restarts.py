"""Counting worker restarts and recycles from successive describes.

A worker is keyed by what TorchServe keeps when it starts a new process for it: its id
(``9000``) and start time (the collector builds the key ``id@startTime``). So a new pid under
a known key is one exit of the old process; a new server, which numbers its workers from 9000
again with new start times, brings new keys, not restarts. The old process's last published
file says whether it left on purpose: ``recycle`` (counted as a recycle), ``retire`` (a
planned scale down, not counted); anything else is a restart (a crash, a kill, an initialize
that failed). A key that disappears was scaled down: not counted either. An empty worker list
is not taken as "all gone": a describe that failed (timed out, 500, garbage) looks the same,
and forgetting the pids then would miss a restart that happens meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

Leaving = Callable[[str, int], str | None]
"""``leaving(model, pid)``: why that worker process said it would exit, if it did."""


class ExitCounter:
    """Restarts and recycles per model since this process started watching."""

    def __init__(self) -> None:
        self.restarts: Counter[str] = Counter()
        self.recycles: Counter[str] = Counter()
        self._pids: dict[str, dict[str, int]] = {}

    def update(self, model: str, pids: Mapping[str, int], leaving: Leaving) -> None:
        """``pids``: worker key to process id now (0: none reported yet, ignored)."""
        known = self._pids.setdefault(model, {})
        self.restarts[model] += 0  # a model seen is exported, at 0 until something happens
        self.recycles[model] += 0
        if not pids:
            return
        for worker, pid in pids.items():
            if pid <= 0:
                continue
            before = known.get(worker)
            if before is not None and before != pid:
                reason = leaving(model, before)
                if reason == "recycle":
                    self.recycles[model] += 1
                elif reason != "retire":
                    self.restarts[model] += 1
            known[worker] = pid
        for gone in set(known) - set(pids):  # scaled down, or the model was unregistered
            del known[gone]

    def forget(self, models: Iterable[str]) -> None:
        """Drop the pids of ``models`` (unregistered); their counts stay exported."""
        for model in models:
            self._pids.pop(model, None)

    def watched(self) -> set[str]:
        return set(self._pids)

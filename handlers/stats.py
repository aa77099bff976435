"""What one worker has served, for custom metadata and metrics."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter


@dataclasses.dataclass
class WorkerStats:
    """Counters of one worker process; TorchServe runs one handler per worker."""

    requests: int = 0
    errors: int = 0
    batches: Counter[int] = dataclasses.field(default_factory=Counter)
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    def record_batch(self, size: int, errors: int, stage_ms: dict[str, float]) -> None:
        self.requests += size
        self.errors += errors
        self.batches[size] += 1
        for stage, ms in stage_ms.items():
            self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + ms

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "requests": self.requests,
            "errors": self.errors,
            "batches": {str(size): n for size, n in sorted(self.batches.items())},
            "stage_ms_total": {k: round(v, 3) for k, v in sorted(self.stage_ms.items())},
        }

"""What one worker has served, for custom metadata and metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

PUBLISH_EVERY_SECONDS = 0.2


def stats_dir(model_name: str) -> Path:
    """Where workers publish their counters: ``$TMPDIR/servekit/<model>/<pid>.json``.

    A TorchServe worker inherits the server's ``TMPDIR``; tools run with the same one.
    """
    return Path(tempfile.gettempdir()) / "servekit" / model_name


@dataclasses.dataclass
class WorkerStats:
    """Counters of one worker process; TorchServe runs one handler per worker."""

    requests: int = 0
    errors: int = 0
    batches: Counter[int] = dataclasses.field(default_factory=Counter)
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    published_at: float = 0.0

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

    def publish(self, model_name: str, force: bool = False) -> None:
        """Write this worker's counters for tools like scripts/recycle_workers.py (throttled)."""
        now = time.monotonic()
        if not force and now - self.published_at < PUBLISH_EVERY_SECONDS:
            return
        self.published_at = now
        directory = stats_dir(model_name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{os.getpid()}.json"
            tmp.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "requests": self.requests,
                        "errors": self.errors,
                        "time": time.time(),
                    }
                )
            )
            os.replace(tmp, directory / f"{os.getpid()}.json")
        except OSError:
            pass  # counters are best effort; serving must not fail over them

"""Options of the operations demo handlers (slow and leaky models)."""

from __future__ import annotations

import dataclasses

from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions


@dataclasses.dataclass(frozen=True)
class SlowOptions(HandlerOptions):
    delay_ms: int = 200
    """Time each batch takes, on purpose."""
    warmup_ms: int = 0
    """Extra time the warmup takes, to make the 'warming' status observable."""
    outage_file: str = ""
    """While this file (relative to TMPDIR) exists, every batch fails: an outage drill."""

    def check(self) -> None:
        super().check()
        for name in ("delay_ms", "warmup_ms"):
            if not 0 <= getattr(self, name) <= 600_000:
                raise ModelLoadError(
                    f"handler option '{name}' is {getattr(self, name)}; it must be 0..600000"
                )


@dataclasses.dataclass(frozen=True)
class LeakyOptions(HandlerOptions):
    leak_kb: int = 1024
    """Memory each request keeps for ever, on purpose."""

    def check(self) -> None:
        super().check()
        if not 0 <= self.leak_kb <= 1_048_576:
            raise ModelLoadError(
                f"handler option 'leak_kb' is {self.leak_kb}; it must be 0..1048576"
            )

"""Corpus: an options module that is not the toolkit's (rebuilt from its fields)."""

import dataclasses

from servekit.runtime.options import HandlerOptions


@dataclasses.dataclass(frozen=True)
class ScaledOptions(HandlerOptions):
    scale: float = 1.0
    labels: tuple[str, ...] = ()
    mode: str | None = None

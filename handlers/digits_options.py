"""Options of the digits handler (its own module: TorchServe wants one class per handler file)."""

from __future__ import annotations

import dataclasses

from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions

INVERT_MODES = ("auto", "never", "always")


@dataclasses.dataclass(frozen=True)
class DigitsOptions(HandlerOptions):
    top_k: int = 3
    """How many digits to list with their probabilities."""
    invert: str = "auto"
    """Dark ink on light paper is inverted: 'auto' decides from the image border."""
    max_image_bytes: int = 5_000_000
    """Larger inputs get 413."""
    max_pixels: int = 4_000_000
    """Larger images get 413 before they are decoded."""

    def check(self) -> None:
        super().check()
        if not 1 <= self.top_k <= 10:
            raise ModelLoadError(f"handler option 'top_k' is {self.top_k}; it must be 1..10")
        if self.invert not in INVERT_MODES:
            raise ModelLoadError(
                f"handler option 'invert' is {self.invert!r}; allowed: {', '.join(INVERT_MODES)}"
            )

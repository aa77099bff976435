"""Options of the ImageNet classifier (own module: one class per handler file)."""

from __future__ import annotations

import dataclasses

from servekit.runtime.backends import BackendOptions
from servekit.runtime.errors import ModelLoadError

CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ImagenetOptions(BackendOptions):
    top_k: int = 5
    """How many classes to list with their probabilities, best first."""
    max_image_bytes: int = 10_000_000
    """Larger inputs get 413."""
    max_pixels: int = 40_000_000
    """Larger images get 413 before they are decoded."""

    def check(self) -> None:
        super().check()
        if not 1 <= self.top_k <= CLASSES:
            raise ModelLoadError(f"handler option 'top_k' is {self.top_k}; it must be 1..{CLASSES}")
        for name in ("max_image_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ModelLoadError(
                    f"handler option '{name}' is {getattr(self, name)}; it must be >= 1"
                )

"""Options of the text-embedding handler (own module: one class per handler file)."""

from __future__ import annotations

import dataclasses

from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions

MODEL_MAX_TOKENS = 512  # BERT's position embeddings


@dataclasses.dataclass(frozen=True)
class EmbeddingOptions(HandlerOptions):
    max_tokens: int = 256
    """Tokens per string, [CLS] and [SEP] included; longer strings get 413 (or see truncate)."""
    truncate: bool = False
    """Cut strings longer than max_tokens instead of rejecting them."""
    max_chars: int = 8192
    """Characters per string, looked at before tokenizing (about 1 s per million characters):
    longer strings get 413, or with truncate are cut to this length first."""
    max_strings_per_request: int = 64
    """A request's list may hold this many strings; more get 413."""
    group_size: int = 8
    """Strings per forward pass: the batch's strings, sorted by length, padded per group.

    Smaller groups pad less: on 2 CPU cores with sentences of 5-53 tokens, batches of 32
    ran 203 strings/s with groups of 8 against 110 with one group of 32 (measured in process,
    servekit limit)."""
    max_batch_cost: int = 16_384
    """Tokens one batch may hold (64 strings of 256 tokens: about 10 s on 2 loaded cores,
    well inside responseTimeout 60 s); a request over it gets 413, those past it 503."""
    normalize: bool = True
    """L2-normalize the mean-pooled embeddings (cosine similarity is then a dot product)."""

    def check(self) -> None:
        super().check()
        if not 2 < self.max_tokens <= MODEL_MAX_TOKENS:
            raise ModelLoadError(
                f"handler option 'max_tokens' is {self.max_tokens}; "
                f"it must be 3..{MODEL_MAX_TOKENS} ([CLS] and [SEP] count)"
            )
        for name in ("max_chars", "max_strings_per_request", "group_size"):
            if getattr(self, name) < 1:
                raise ModelLoadError(
                    f"handler option '{name}' is {getattr(self, name)}; it must be >= 1"
                )

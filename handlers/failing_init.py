"""``failing_model``: its ``initialize`` fails on purpose, for init-failure handling.

TorchServe retries a failing worker with backoff until ``maxRetryTimeoutInSec``;
``/ping`` says Healthy all that while. Not loaded by the default config.
"""

from __future__ import annotations

from typing import Any

from servekit.runtime.base import ToolkitHandler
from servekit.runtime.errors import ModelLoadError


class FailingInitHandler(ToolkitHandler[Any]):
    """Fails every ``initialize`` with a message naming the model."""

    def load_model(self) -> Any:
        raise ModelLoadError(
            f"model '{self.model_name}' fails to initialize on purpose (demo of init failure)"
        )

"""``leaky_model``: every request keeps ``leak_kb`` of memory for ever, on purpose.

For worker recycling (``servekit recycle``): its workers' ``memoryUsage`` grows
with every request until they are recycled. Answers ``{"leaked_kb": total, "pid": pid}``.
"""

from __future__ import annotations

import os
from typing import Any

from handlers.demo_options import LeakyOptions
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload


class LeakyHandler(ToolkitHandler[int]):
    """Leaks on purpose; any body is accepted."""

    options_class = LeakyOptions
    options: LeakyOptions
    accepts_empty = True
    input_schema = {"content_type": "anything; the body is ignored"}
    output_schema = {"leaked_kb": "memory this worker holds on purpose", "pid": "worker pid"}

    def load_model(self) -> list[bytearray]:
        return []

    def parse_request(self, payload: Payload) -> int:
        return self.options.leak_kb

    def inference(self, batch: list[int]) -> list[int]:
        for kb in batch:
            self.model.append(bytearray(os.urandom(1024)) * kb)  # touched pages: real RSS
        return [len(self.model) * self.options.leak_kb] * len(batch)

    def postprocess(self, outputs: list[int]) -> list[dict[str, Any]]:
        return [{"leaked_kb": total, "pid": os.getpid()} for total in outputs]

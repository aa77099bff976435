"""``empty_model``: no model, answers at once; for health checks and frontend overhead."""

from __future__ import annotations

from typing import Any

from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload


class EmptyHandler(ToolkitHandler[int]):
    """Any body, even none, gets ``{"status": "ok"}``."""

    accepts_empty = True
    input_schema = {"content_type": "anything; the body is ignored"}
    output_schema = {"status": "'ok'", "bytes": "size of the body received"}

    def parse_request(self, payload: Payload) -> int:
        value = payload.value
        return len(value) if isinstance(value, (bytes, bytearray, str)) else 0

    def postprocess(self, outputs: list[int]) -> list[dict[str, Any]]:
        return [{"status": "ok", "bytes": size} for size in outputs]

    def inference(self, batch: list[int]) -> list[int]:
        return batch

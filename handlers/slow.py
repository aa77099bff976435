"""``slow_model``: takes ``delay_ms`` per batch, on purpose; for queue overflow and status demos.

``{"value": 3}`` answers ``{"value": 3, "double": 6}``; ``{"value": 3, "fail": true}`` fails
inside the model (a 500 that the self-test shows to be the input's: the status stays
'ready'). While the file named by the option ``outage_file`` exists (relative to
``TMPDIR``), every batch fails, self-tests included: an outage drill that makes the
status 'degraded', and 'ready' again once the file is gone, without traffic.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from handlers.demo_options import SlowOptions
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload
from servekit.runtime.errors import BadRequest

Item = tuple[float, bool]


class SlowHandler(ToolkitHandler[Item]):
    """Doubles a number, slowly."""

    options_class = SlowOptions
    options: SlowOptions
    input_schema = {"value": "finite number", "fail": "optional bool: fail inside the model"}
    output_schema = {"value": "the number sent", "double": "twice the number"}

    def parse_request(self, payload: Payload) -> Item:
        body = payload.json()
        value = body.get("value") if isinstance(body, dict) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise BadRequest(f'send {{"value": <finite number>}}; got {body!r:.80}')
        return float(value), body.get("fail") is True

    def inference(self, batch: list[Item]) -> list[Item]:
        time.sleep(self.options.delay_ms / 1000)
        outage = self.options.outage_file
        if outage and (Path(tempfile.gettempdir()) / outage).exists():
            raise RuntimeError(f"slow_model outage drill: {outage} exists")
        if any(fail for _, fail in batch):
            raise RuntimeError("slow_model asked to fail")
        return batch

    def postprocess(self, outputs: list[Item]) -> list[dict[str, Any]]:
        return [{"value": value, "double": 2 * value} for value, _ in outputs]

    def warmup_items(self, n: int) -> list[Item]:
        time.sleep(self.options.warmup_ms / 1000)
        return [(0.0, False)] * n

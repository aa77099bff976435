"""Iris species from four measurements (cm): JSON in, label and probabilities out."""

from __future__ import annotations

import json
from typing import Any

import torch

from handlers.nets import IRIS_FEATURES, IrisNet
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload, brief, brief_list
from servekit.runtime.errors import BadRequest
from servekit.runtime.outputs import check_finite

Features = list[float]
MAX_CM = 1000.0
"""The largest measurement accepted: far beyond any iris, far within what float32 computes
(the model standardizes in float32: 3e38 cm is a finite float32 and still ends in NaN)."""


class IrisHandler(ToolkitHandler[Features]):
    """``{"features": [5.1, 3.5, 1.4, 0.2]}``, a bare list, or the four named measurements."""

    input_schema = {
        "content_type": "application/json",
        "oneOf": [
            {
                "features": f"list of {len(IRIS_FEATURES)} numbers >= 0 in cm, "
                f"in order {list(IRIS_FEATURES)}"
            },
            {name: "number >= 0 (cm)" for name in IRIS_FEATURES},
        ],
    }
    output_schema = {"label": "species name", "probabilities": "species name -> probability"}

    def load_model(self) -> torch.nn.Module:
        return self.load_state_dict(IrisNet(), "iris.pt")

    def load_labels(self) -> list[str]:
        return list(json.loads(self.artifact("iris_labels.json").read_text()))

    def parse_request(self, payload: Payload) -> Features:
        return _features(payload.json())

    def preprocess(self, items: list[Features]) -> torch.Tensor:
        return torch.tensor(items, dtype=torch.float32)

    def postprocess(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        labels = self.labels or []
        probabilities = torch.softmax(check_finite(outputs), dim=1).tolist()
        return [
            {
                "label": labels[max(range(len(row)), key=row.__getitem__)],
                "probabilities": {name: round(p, 6) for name, p in zip(labels, row, strict=True)},
            }
            for row in probabilities
        ]

    def warmup_items(self, n: int) -> list[Features]:
        return [[5.8, 3.0, 4.3, 1.3]] * n


def _features(value: Any) -> Features:
    if isinstance(value, dict):
        if "features" in value:
            value = value["features"]
        elif set(IRIS_FEATURES) <= value.keys():
            value = [value[name] for name in IRIS_FEATURES]
        else:
            raise BadRequest(
                f"JSON object needs 'features' or all of {', '.join(IRIS_FEATURES)}; "
                f"got keys: {brief_list(list(map(str, value))) or 'none'}"
            )
    if not isinstance(value, list) or len(value) != len(IRIS_FEATURES):
        shape = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise BadRequest(f"features must be a list of {len(IRIS_FEATURES)} numbers; got {shape}")
    return [_measurement(position, x) for position, x in enumerate(value)]


def _measurement(position: int, x: Any) -> float:
    """One feature in cm; compared as it came (a 400-digit int overflows float())."""
    where = f"feature {position} ({IRIS_FEATURES[position]}) is {brief(x)}"
    # "not x >= 0" is also true for NaN; int and float compare exactly, whatever their size.
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0:
        raise BadRequest(f"{where}; expected a finite number >= 0 (cm)")
    if x > MAX_CM:
        raise BadRequest(f"{where}; expected at most {MAX_CM:g} (cm)")
    return float(x)

"""The ``tabular`` kind: one row of numbers per request, a class (with probabilities) or the
model's values back. ``servekit new-model NAME --kind tabular`` writes a handler on this."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from servekit.runtime.decoding import Payload, brief, brief_list
from servekit.runtime.errors import BadRequest, ModelLoadError
from servekit.runtime.model_handler import ModelHandler
from servekit.runtime.options import HandlerOptions
from servekit.runtime.outputs import as_rows, class_names
from servekit.runtime.weights import WeightsOptions

TASKS = ("classification", "regression")
MAX_FEATURES = 100_000

Row = list[float]


@dataclasses.dataclass(frozen=True)
class TabularOptions(WeightsOptions):
    features: int = 0
    """How many numbers one row holds (the model's input width)."""
    feature_names: tuple[str, ...] = ()
    """Their names, in order: a request may then send them as a JSON object."""
    task: str = "classification"
    """'classification': softmax over the outputs, best label first; 'regression': the outputs."""
    max_abs_value: float = 1e6
    """Larger numbers get 400: far past any real feature, far inside float32."""

    def check(self) -> None:
        super().check()
        if not 1 <= self.features <= MAX_FEATURES:
            raise ModelLoadError(
                f"handler option 'features' is {self.features}; it must be 1..{MAX_FEATURES} "
                "(the number of values in one row)"
            )
        names = self.feature_names
        if names and (len(names) != self.features or len(set(names)) != len(names)):
            raise ModelLoadError(
                f"handler option 'feature_names' holds {len(names)} names "
                f"({len(set(names))} distinct); it needs {self.features} distinct names"
            )
        if self.task not in TASKS:
            raise ModelLoadError(
                f"handler option 'task' is {self.task!r}; allowed: {', '.join(TASKS)}"
            )
        if not 0 < self.max_abs_value < 3e38:
            raise ModelLoadError(
                f"handler option 'max_abs_value' is {self.max_abs_value}; it must be > 0 and "
                "finite in float32"
            )


class TabularHandler(ModelHandler[Row]):
    """``{"features": [..]}``, a bare list, or ``{"name": value, ...}`` with ``feature_names``."""

    options_class: ClassVar[type[HandlerOptions]] = TabularOptions
    options: TabularOptions
    output_schema = {
        "label": "the best class (classification)",
        "probabilities": "class -> probability (classification)",
        "outputs": "the model's values for the row (regression)",
    }

    def request_schema(self) -> dict[str, Any]:
        n, names = self.options.features, list(self.options.feature_names)
        shapes: list[Any] = [
            {"features": f"list of {n} numbers" + (f" in order {names}" if names else "")}
        ]
        shapes.append(f"a bare list of {n} numbers")
        if names:
            shapes.append({name: "number" for name in names})
        return {"content_type": "application/json", "oneOf": shapes}

    def parse_request(self, payload: Payload) -> Row:
        return features(payload.json(), self.options)

    def preprocess(self, items: list[Row]) -> torch.Tensor:
        return torch.tensor(items, dtype=torch.float32)

    def postprocess(self, outputs: Any) -> list[dict[str, Any]]:
        rows = as_rows(outputs)
        if self.options.task == "regression":
            return [{"outputs": [round(v, 6) for v in row]} for row in rows.tolist()]
        names = class_names(self.labels, rows.shape[1])
        results = []
        for row in torch.softmax(rows, dim=1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            probabilities = {name: round(p, 6) for name, p in zip(names, row, strict=True)}
            results.append({"label": names[best], "probabilities": probabilities})
        return results

    def warmup_items(self, n: int) -> list[Row]:
        return [[0.0] * self.options.features] * n


def features(value: Any, options: TabularOptions) -> Row:
    """One row of ``options.features`` finite numbers from a request's JSON."""
    n, names = options.features, options.feature_names
    if isinstance(value, dict):
        if "features" in value:
            value = value["features"]
        elif names and set(names) <= value.keys():
            value = [value[name] for name in names]
        else:
            wanted = "'features'" + (f" or all of {', '.join(names)}" if names else "")
            keys = brief_list(list(map(str, value))) or "none"
            raise BadRequest(f"JSON object needs {wanted}; got keys: {keys}")
    if not isinstance(value, list) or len(value) != n:
        shape = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise BadRequest(f"features must be a list of {n} numbers; got {shape}")
    return [_number(position, x, options) for position, x in enumerate(value)]


def _number(position: int, x: Any, options: TabularOptions) -> float:
    names = options.feature_names
    where = f"feature {position}" + (f" ({names[position]})" if names else "")
    limit = options.max_abs_value
    # compared as it came: a 400-digit int overflows float(); "not <=" is also true for NaN
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not -limit <= x <= limit:
        raise BadRequest(f"{where} is {brief(x)}; expected a finite number within ±{limit:g}")
    value = float(x)
    if not math.isfinite(value):  # pragma: no cover - excluded by the range check above
        raise BadRequest(f"{where} is not finite")
    return value

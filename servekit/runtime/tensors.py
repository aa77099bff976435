"""The ``custom`` kind: a tensor in as nested JSON lists, the model's output tensor back.

It serves any model that takes one tensor per request, batched on the first dimension;
``servekit new-model NAME --kind custom`` writes a handler on it for the user to reshape
(``parse_request``, ``postprocess``). Without weights it echoes its input, a working start.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch

from servekit.runtime.decoding import Payload, brief, brief_list
from servekit.runtime.errors import BadRequest, ModelLoadError, PayloadTooLarge
from servekit.runtime.model_handler import ModelHandler
from servekit.runtime.options import HandlerOptions
from servekit.runtime.outputs import check_finite, first_tensor
from servekit.runtime.weights import WeightsOptions

DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32}
INT_LIMITS = {"int64": 2**63, "int32": 2**31}
MAX_RANK = 8


@dataclasses.dataclass(frozen=True)
class TensorOptions(WeightsOptions):
    input_shape: tuple[int, ...] = ()
    """The shape of one request's tensor, without the batch dimension (empty: any shape, and a
    batch then holds requests of one shape only: set it when batchSize > 1)."""
    input_dtype: str = "float32"
    """float32, float64, int64 or int32."""
    max_elements: int = 1_000_000
    """Numbers one request may send; more get 413."""
    max_abs_value: float = 1e6
    """Larger numbers get 400: a float32 model overflows to Infinity long before 3.4e38."""

    def check(self) -> None:
        super().check()
        if len(self.input_shape) > MAX_RANK or not all(d >= 1 for d in self.input_shape):
            raise ModelLoadError(
                f"handler option 'input_shape' is {list(self.input_shape)}; it must hold at "
                f"most {MAX_RANK} sizes, each >= 1"
            )
        if self.input_dtype not in DTYPES:
            raise ModelLoadError(
                f"handler option 'input_dtype' is {self.input_dtype!r}; "
                f"allowed: {', '.join(DTYPES)}"
            )
        if not 0 < self.max_abs_value < 3e38:
            raise ModelLoadError(
                f"handler option 'max_abs_value' is {self.max_abs_value}; it must be > 0 and "
                "finite in float32"
            )
        if self.max_elements < 1:
            raise ModelLoadError(
                f"handler option 'max_elements' is {self.max_elements}; it must be >= 1"
            )


class TensorHandler(ModelHandler[np.ndarray]):
    """``{"inputs": [[...], ...]}`` or the bare nested list; ``{"outputs": ...}`` back."""

    options_class: ClassVar[type[HandlerOptions]] = TensorOptions
    options: TensorOptions
    output_schema = {"outputs": "the model's output for this request, as nested lists"}

    def request_schema(self) -> dict[str, Any]:
        shape = list(self.options.input_shape) or "any"
        return {
            "content_type": "application/json",
            "oneOf": [{"inputs": f"nested lists of shape {shape}"}, "the nested lists alone"],
            "dtype": self.options.input_dtype,
        }

    def parse_request(self, payload: Payload) -> np.ndarray:
        return tensor(payload.json(), self.options)

    def preprocess(self, items: list[np.ndarray]) -> torch.Tensor:
        shapes = {item.shape for item in items}
        if len(shapes) > 1:  # only without input_shape; each request then runs alone
            raise ValueError(f"requests of different shapes in one batch: {sorted(shapes)}")
        return torch.from_numpy(np.stack(items))

    def inference(self, batch: torch.Tensor) -> Any:
        return batch if self.model is None else self.model(batch)

    def postprocess(self, outputs: Any) -> list[dict[str, Any]]:
        found = first_tensor(outputs).detach()
        if found.is_floating_point():
            found = check_finite(found.float())
        return [{"outputs": row.tolist()} for row in found]

    def warmup_items(self, n: int) -> list[np.ndarray]:
        shape = self.options.input_shape
        if not shape:
            return []  # no shape known: nothing to warm up with
        return [np.zeros(shape, dtype=DTYPES[self.options.input_dtype])] * n


def tensor(value: Any, options: TensorOptions) -> np.ndarray:
    """One request's tensor, checked: numbers only, rectangular, the declared shape."""
    if isinstance(value, dict):
        if "inputs" not in value:
            keys = brief_list(list(map(str, value))) or "none"
            raise BadRequest(f"JSON object needs the key 'inputs' (nested lists); got keys: {keys}")
        value = value["inputs"]
    count = _count_numbers(value, options)
    if count == 0:
        raise BadRequest("the input holds no numbers; send nested lists of numbers")
    try:
        array = np.array(value, dtype=DTYPES[options.input_dtype])
    except (ValueError, OverflowError) as err:
        raise BadRequest(f"the input is not a rectangular array of numbers: {err}") from None
    expected = options.input_shape
    if expected and array.shape != expected:
        raise BadRequest(f"the input has shape {list(array.shape)}; expected {list(expected)}")
    return array


def _count_numbers(value: Any, options: TensorOptions) -> int:
    """How many numbers the nested lists hold; a 400 for anything else, a 413 past the limit."""
    integer = options.input_dtype in INT_LIMITS
    limit = INT_LIMITS.get(options.input_dtype, 0)
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
            if len(pending) > options.max_elements:
                raise PayloadTooLarge(f"the input holds more than {options.max_elements} values")
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BadRequest(f"the input holds {brief(item)}; expected numbers in nested lists")
        if integer and (not isinstance(item, int) or not -limit <= item < limit):
            raise BadRequest(f"the input holds {brief(item)}; expected {options.input_dtype}")
        if not integer and isinstance(item, float) and math.isnan(item):
            raise BadRequest(f"the input holds NaN; expected finite {options.input_dtype} numbers")
        if not integer and not -options.max_abs_value <= item <= options.max_abs_value:
            raise BadRequest(
                f"the input holds {brief(item)}; expected numbers within "
                f"±{options.max_abs_value:g} (max_abs_value)"
            )
        count += 1
        if count > options.max_elements:
            raise PayloadTooLarge(f"the input holds more than {options.max_elements} numbers")
    return count

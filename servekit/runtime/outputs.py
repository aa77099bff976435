"""What every kind does with a model's output: find the tensor, check it is finite, rank classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

OUTPUT_KEYS = ("logits", "last_hidden_state")
"""A Hugging Face output's main tensor: a head's logits, an encoder's token vectors."""


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or Infinity: a model failure (a 500), never a 200 with NaN."""


def check_finite(outputs: torch.Tensor) -> torch.Tensor:
    """``outputs`` as they are when every value is finite, else ``NonFiniteOutput``.

    Raised from ``postprocess``, it fails the batch; the base handler then retries one
    request at a time, so only the request whose output is not finite fails.
    """
    if not bool(torch.isfinite(outputs).all()):
        raise NonFiniteOutput(f"model output {tuple(outputs.shape)} holds NaN or Infinity")
    return outputs


def first_tensor(outputs: Any) -> torch.Tensor:
    """The model's main output: the tensor itself, the first of a tuple or list, or of a
    mapping (a Hugging Face output) its ``logits``, else its ``last_hidden_state``, else its
    first value; a ``TypeError`` naming what came otherwise."""
    found = outputs
    if isinstance(found, Mapping):
        key = next((k for k in OUTPUT_KEYS if k in found), None)
        found = found[key] if key is not None else next(iter(found.values()), None)
    elif isinstance(found, Sequence) and found and not isinstance(found, (str, bytes)):
        found = found[0]
    if not isinstance(found, torch.Tensor):
        raise TypeError(f"the model returned {type(outputs).__name__}, not a tensor")
    return found


def as_rows(outputs: Any) -> torch.Tensor:
    """The main output as float32 rows, one per input (``[batch, width]``), checked finite.

    A 1-D output is one value per input; whether there are as many rows as inputs, the base
    handler checks on the results.
    """
    tensor = check_finite(first_tensor(outputs).detach().float())
    if tensor.dim() == 0:
        raise ValueError("the model gave a single number for the whole batch; expected rows")
    return tensor.unsqueeze(1) if tensor.dim() == 1 else tensor.reshape(tensor.shape[0], -1)


def class_names(labels: Sequence[str] | None, width: int) -> list[str]:
    """The names of ``width`` classes: the labels (which must be as many), else the indices."""
    if labels is None:
        return [str(i) for i in range(width)]
    if len(labels) != width:
        raise ValueError(
            f"the model gives {width} classes but labels.json names {len(labels)}; "
            "give labels that match the model's output"
        )
    return list(labels)


def ranked(
    probabilities: torch.Tensor, names: Sequence[str], top_k: int
) -> list[list[dict[str, Any]]]:
    """Per row, the ``top_k`` classes as ``{label, class_id, probability}``, best first."""
    k = min(top_k, probabilities.shape[1])
    top = torch.topk(probabilities, k, dim=1)
    return [
        [
            {"label": names[i], "class_id": i, "probability": round(p, 6)}
            for p, i in zip(values, indices, strict=True)
        ]
        for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]

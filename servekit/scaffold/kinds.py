"""What ``servekit new-model`` knows of each kind: its runtime handler, the weights it reads,
its handler options from the command line, an example request and what a good answer holds."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from servekit.errors import ConfigError
from servekit.runtime import weights

FILE_FORMATS = (weights.TORCHSCRIPT, weights.EXPORT, weights.STATE_DICT, weights.SAFETENSORS)
MAX_EXAMPLE_ELEMENTS = 1_000_000  # TensorOptions.max_elements' default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Example:
    """An example request: the file written to ``examples/`` and how it is sent."""

    suffix: str
    body: bytes
    content_type: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Kind:
    name: str
    module: str
    """The runtime module of its handler (``servekit.runtime.<module>``)."""
    handler: str
    options: str
    item: str
    """The type ``parse_request`` returns, as the handler template writes it."""
    imports: tuple[str, ...]
    """Names the template imports from the kind's runtime module besides handler and options."""
    parse: str
    """The body of the template's ``parse_request``."""
    formats: tuple[str, ...]
    weights_required: bool
    answer_keys: Callable[[dict[str, Any]], tuple[str, ...]]
    """Keys a good answer to the example holds, given the handler options."""
    bad_status: int
    """The status of the example bad request the generated tests send."""
    handler_options: Callable[[argparse.Namespace, str], dict[str, Any]]
    example: Callable[[argparse.Namespace, dict[str, Any]], Example]
    summary: str


def _tabular_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    if not args.features:
        raise ConfigError(
            "--features is required for a tabular model: the number of values in one row "
            "(--features 4) or their names in order (--features sepal_length,sepal_width,...)"
        )
    names = [n.strip() for n in args.features.split(",")]
    options: dict[str, Any] = {}
    if len(names) == 1 and names[0].isdigit():
        options["features"] = int(names[0])
    else:
        if not all(names) or len(set(names)) != len(names):
            raise ConfigError(f"--features {args.features!r}: give distinct, non-empty names")
        options |= {"features": len(names), "feature_names": names}
    task = args.task or ("classification" if args.labels else "regression")
    options["task"] = task
    return options


def _tabular_example(args: argparse.Namespace, options: dict[str, Any]) -> Example:
    row = [0.0] * int(options["features"])
    return _json_example({"features": row})


def _image_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    mode = args.mode or "RGB"
    channels = 3 if mode == "RGB" else 1
    mean = _floats("--mean", args.mean) if args.mean else None
    std = _floats("--std", args.std) if args.std else None
    if mean is None:
        mean = list(IMAGENET_MEAN) if channels == 3 else [0.0]
    if std is None:
        std = list(IMAGENET_STD) if channels == 3 else [1.0]
    size = args.image_size if args.image_size is not None else 224
    resize = (
        args.resize if args.resize is not None else (round(size * 256 / 224) if size >= 32 else 0)
    )
    return {
        "image_size": size,
        "resize": resize,
        "mode": mode,
        "mean": mean,
        "std": std,
        "top_k": args.top_k if args.top_k is not None else 5,
    }


def _image_example(args: argparse.Namespace, options: dict[str, Any]) -> Example:
    side = max(int(options["image_size"]), int(options["resize"]) or 0, 8)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grey = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    image = Image.fromarray(grey, "L").convert(options["mode"])
    out = io.BytesIO()
    image.save(out, "PNG")
    return Example(".png", out.getvalue(), "image/png")


def _text_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    options: dict[str, Any] = {"max_tokens": 256 if args.max_tokens is None else args.max_tokens}
    if args.kind == "text-embedding":
        options["pooling"] = args.pooling or "mean"
    return options


def _text_example(args: argparse.Namespace, options: dict[str, Any]) -> Example:
    verb = "embed" if args.kind == "text-embedding" else "classify"
    return _json_example({"inputs": f"An example sentence to {verb}."})


def _custom_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    options: dict[str, Any] = {"input_dtype": args.input_dtype or "float32"}
    if args.input_shape:
        shape = _ints("--input-shape", args.input_shape)
        if math.prod(shape) > MAX_EXAMPLE_ELEMENTS:
            raise ConfigError(
                f"--input-shape {args.input_shape}: {math.prod(shape)} values per request; a "
                f"request may hold at most {MAX_EXAMPLE_ELEMENTS} (the kind's max_elements)"
            )
        options["input_shape"] = shape
    elif fmt:
        raise ConfigError(
            "--input-shape is required for a custom model with weights: the shape of one "
            "request's tensor without the batch dimension (--input-shape 1,28,28)"
        )
    return options


def _custom_example(args: argparse.Namespace, options: dict[str, Any]) -> Example:
    shape = options.get("input_shape") or [3]
    kind = int if str(options["input_dtype"]).startswith("int") else float
    return _json_example({"inputs": np.zeros(shape).astype(kind).tolist()})


OWN_OPTIONS = {
    "tabular": ("features", "task"),
    "image-classifier": ("image_size", "resize", "mode", "mean", "std", "top_k"),
    "text-embedding": ("max_tokens", "pooling"),
    "text-classifier": ("max_tokens",),
    "custom": ("input_shape", "input_dtype"),
}


def foreign_options(args: argparse.Namespace) -> list[str]:
    """The kind-specific options given that belong to another kind (as --flags)."""
    mine = set(OWN_OPTIONS[args.kind])
    others = {name for names in OWN_OPTIONS.values() for name in names} - mine
    return sorted(f"--{n.replace('_', '-')}" for n in others if getattr(args, n) is not None)


def _json_example(value: Any) -> Example:
    return Example(".json", json.dumps(value).encode() + b"\n", "application/json")


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give numbers separated by commas") from None


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give whole numbers separated by commas") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} {text!r}: every size must be >= 1")
    return values


TEXT_PARSE = (
    "found, single = texts(payload, self.options.max_strings_per_request)\n"
    "        bounded = [self.bounded(text, single, i) for i, text in enumerate(found)]\n"
    "        return TextInput(self.token_ids(bounded), single)"
)


def _tabular_keys(options: dict[str, Any]) -> tuple[str, ...]:
    return ("label", "probabilities") if options["task"] == "classification" else ("outputs",)


KINDS = {
    kind.name: kind
    for kind in (
        Kind(
            name="tabular",
            module="tabular",
            handler="TabularHandler",
            options="TabularOptions",
            item="Row",
            imports=("Row", "features"),
            parse="return features(payload.json(), self.options)",
            formats=FILE_FORMATS,
            weights_required=True,
            answer_keys=_tabular_keys,
            bad_status=400,
            handler_options=_tabular_options,
            example=_tabular_example,
            summary="one row of numbers in, a class with probabilities (or the values) out",
        ),
        Kind(
            name="image-classifier",
            module="vision",
            handler="ImageClassifierHandler",
            options="ImageOptions",
            item="np.ndarray",
            imports=("pixels",),
            parse="return pixels(payload.raw_bytes(self.options.max_image_bytes), self.options)",
            formats=FILE_FORMATS,
            weights_required=True,
            answer_keys=lambda options: ("label", "class_id", "top_k"),
            bad_status=415,
            handler_options=_image_options,
            example=_image_example,
            summary="an image in, the top classes with probabilities out",
        ),
        Kind(
            name="text-embedding",
            module="text",
            handler="TextEmbeddingHandler",
            options="EmbeddingOptions",
            item="TextInput",
            imports=("texts",),
            parse=TEXT_PARSE,
            formats=(weights.HUGGINGFACE,),
            weights_required=True,
            answer_keys=lambda options: ("embedding", "tokens"),
            bad_status=400,
            handler_options=_text_options,
            example=_text_example,
            summary="a string (or a list) in, one vector per string out",
        ),
        Kind(
            name="text-classifier",
            module="text",
            handler="TextClassifierHandler",
            options="ClassifierOptions",
            item="TextInput",
            imports=("texts",),
            parse=TEXT_PARSE,
            formats=(weights.HUGGINGFACE,),
            weights_required=True,
            answer_keys=lambda options: ("label", "score", "probabilities"),
            bad_status=400,
            handler_options=_text_options,
            example=_text_example,
            summary="a string (or a list) in, its class with probabilities out",
        ),
        Kind(
            name="custom",
            module="tensors",
            handler="TensorHandler",
            options="TensorOptions",
            item="np.ndarray",
            imports=("tensor",),
            parse="return tensor(payload.json(), self.options)",
            formats=FILE_FORMATS,
            weights_required=False,
            answer_keys=lambda options: ("outputs",),
            bad_status=400,
            handler_options=_custom_options,
            example=_custom_example,
            summary="a tensor as nested lists in, the model's output tensor out (yours to reshape)",
        ),
    )
}

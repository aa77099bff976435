"""The kinds' parsers of untrusted bytes, for any input: a value that keeps the kind's contract
or a ``RequestError`` (4xx), never another exception, within ``SECONDS`` a call.

- ``tabular.features``: exactly ``features`` finite floats within ``max_abs_value``;
- ``tensors.tensor``: an array of the declared dtype and shape, 1..``max_elements`` numbers,
  finite when floating;
- ``text.texts``: 1..``max_strings`` non-blank strings (one when ``single``), valid Unicode;
- ``vision.pixels``: ``[channels, image_size, image_size]`` float32, finite, each channel
  within ``[(0 - mean) / std, (1 - mean) / std]``.

Values reach the parsers as TorchServe hands them over: bytes, text it decoded from UTF-8 for a
``text/*`` content type, or the JSON it parsed itself for ``application/json`` (NaN and lone
surrogates included), wrapped in a ``Payload`` as the base handler does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.runtime.decoding import Payload
from servekit.runtime.errors import RequestError
from servekit.runtime.tabular import TabularOptions, features
from servekit.runtime.tensors import DTYPES, TensorOptions, tensor
from servekit.runtime.text import texts
from servekit.runtime.vision import MODES, ImageOptions, pixels
from tests.fuzz.kept import corpus
from tests.fuzz.test_fuzz_handlers import mutated, special_json

T = TypeVar("T")
SECONDS = 2.0  # per call; the slowest input here (a mutated photo) decodes in milliseconds
IMAGE_TARGETS = ("kinds_vision", "digits", "efficientnet")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.floats(width=32)
    | st.sampled_from([3.4e38, 3.5e38, 1e39, -0.0, 2**63, -(2**63), 2**31, -(2**31) - 1])
    | st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.sampled_from(["features", "inputs", "input", "a", "b", "c"]) | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=40,
)


def rectangular(dtype: str) -> st.SearchStrategy[Any]:
    """Nested lists that are mostly right: a rectangle of numbers, maybe one leaf spoilt."""
    numbers = st.integers(-(2**40), 2**40) if dtype.startswith("int") else st.floats(-1e6, 1e6)
    shape = st.lists(st.integers(0, 4), min_size=0, max_size=4)

    def build(dims: list[int], leaves: list[Any]) -> Any:
        if not dims:
            return leaves.pop() if leaves else 0
        return [build(dims[1:], leaves) for _ in range(dims[0])]

    grid = st.builds(build, shape, st.lists(numbers | scalars, max_size=300))
    return grid | st.builds(build, shape, st.lists(numbers, min_size=300, max_size=300))


CONTENT_TYPES = ["", "application/json", "text/plain", "text/plain; charset=utf-8", "image/png"]


@st.composite
def payloads(draw: st.DrawFn, seeds: list[bytes]) -> Payload:
    """What the base handler gives ``parse_request`` for any request a client can send."""
    body = draw(
        st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
        | special_json()
        | (mutated(seeds) if seeds else st.binary(max_size=5))
    )
    content_type = draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=20))
    return as_torchserve_hands_it(body, content_type, draw(st.booleans()))


def as_torchserve_hands_it(body: bytes, content_type: str, decode: bool = True) -> Payload:
    """TorchServe parses an ``application/json`` body itself and decodes ``text/*`` bodies as
    UTF-8; when that fails, or is turned off, the handler gets the bytes."""
    value: Any = body
    if decode and content_type == "application/json":
        try:
            value = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            value = body
    elif decode and content_type.startswith("text"):
        try:
            value = body.decode("utf-8")
        except UnicodeDecodeError:
            value = body
    return Payload(value, "body", content_type)


def outcome(call: Callable[[], T]) -> T | None:
    """``call()``'s value, or ``None`` for a ``RequestError`` (4xx with a message); in time."""
    started = time.perf_counter()
    try:
        return call()
    except RequestError as err:
        assert 400 <= err.status < 500 and err.message
        return None
    finally:
        assert time.perf_counter() - started < SECONDS


def seeds(*targets: str) -> list[bytes]:
    return [p.read_bytes() for target in targets for p in corpus(target)]


# ----- tabular.features ------------------------------------------------------------------------
tabular_options = st.builds(
    lambda n, named, limit: TabularOptions(
        features=n,
        feature_names=tuple("abcdef"[:n]) if named else (),
        max_abs_value=limit,
    ),
    st.integers(1, 6),
    st.booleans(),
    st.sampled_from([1.0, 1e6, 3.3e38]),
)


def check_row(value: Any, options: TabularOptions) -> None:
    row = outcome(lambda: features(value, options))
    if row is None:
        return
    assert isinstance(row, list) and len(row) == options.features
    for x in row:
        assert type(x) is float and math.isfinite(x) and abs(x) <= options.max_abs_value


@given(value=json_values, options=tabular_options)
@example(value={"features": [1e39, 1, 1, 1]}, options=TabularOptions(features=4))
@example(value=[float("nan")], options=TabularOptions(features=1))
@example(value=[10**400, 1], options=TabularOptions(features=2, max_abs_value=3.3e38))
@example(value={"a": 1, "b": True}, options=TabularOptions(features=2, feature_names=("a", "b")))
def test_features_gives_a_row_or_a_request_error(value: Any, options: TabularOptions) -> None:
    check_row(value, options)


@given(payload=payloads(seeds("iris")), options=tabular_options)
def test_features_of_any_request(payload: Payload, options: TabularOptions) -> None:
    value = outcome(payload.json)
    if value is not None or payload.value in (b"null", None):
        check_row(value, options)


# ----- tensors.tensor --------------------------------------------------------------------------
@st.composite
def tensor_options(draw: st.DrawFn) -> TensorOptions:
    shape = draw(st.sampled_from([(), (3,), (2, 3), (1, 1, 2), (4, 0 + 1)]))
    return TensorOptions(
        input_shape=shape,
        input_dtype=draw(st.sampled_from(sorted(DTYPES))),
        max_elements=draw(st.sampled_from([1, 6, 50, 1_000_000])),
    )


def check_tensor(value: Any, options: TensorOptions) -> None:
    array = outcome(lambda: tensor(value, options))
    if array is None:
        return
    assert isinstance(array, np.ndarray)
    assert array.dtype == DTYPES[options.input_dtype]
    assert 1 <= array.size <= options.max_elements
    if options.input_shape:
        assert array.shape == options.input_shape
    if array.dtype.kind == "f":
        assert np.isfinite(array).all(), array


@given(data=st.data(), options=tensor_options())
@example(data=None, options=TensorOptions())  # NaN: np.array keeps it, the contract does not
def test_tensor_gives_an_array_or_a_request_error(data: Any, options: TensorOptions) -> None:
    if data is None:
        for value in ([float("nan")], [[1.0, float("inf")]], {"inputs": [float("-inf")]}):
            check_tensor(value, options)
        return
    value = data.draw(json_values | rectangular(options.input_dtype), label="value")
    check_tensor(value, options)
    check_tensor({"inputs": value}, options)


@given(payload=payloads(seeds("kinds_tensors")), options=tensor_options())
def test_tensor_of_any_request(payload: Payload, options: TensorOptions) -> None:
    value = outcome(payload.json)
    if value is not None:
        check_tensor(value, options)


def test_tensor_of_deep_nesting_is_a_request_error() -> None:
    deep: Any = [1.0]
    for _ in range(100_000):
        deep = [deep]
    check_tensor(deep, TensorOptions())


# ----- text.texts ------------------------------------------------------------------------------
def check_texts(payload: Payload, max_strings: int) -> None:
    found = outcome(lambda: texts(payload, max_strings))
    if found is None:
        return
    strings, single = found
    assert isinstance(strings, list) and 1 <= len(strings) <= max_strings
    assert not single or len(strings) == 1
    for text in strings:
        assert isinstance(text, str) and text.strip()
        text.encode("utf-8")  # a lone surrogate would crash the tokenizer: a 500


@given(payload=payloads(seeds("minilm")), max_strings=st.sampled_from([1, 3, 64]))
@example(payload=as_torchserve_hands_it(b'["ok", "\\udc00"]', "application/json"), max_strings=3)
@example(payload=as_torchserve_hands_it(b"\xed\xa0\x80", "text/plain"), max_strings=3)
@example(payload=as_torchserve_hands_it(b" \t\n ", "text/plain"), max_strings=3)
def test_texts_gives_strings_or_a_request_error(payload: Payload, max_strings: int) -> None:
    check_texts(payload, max_strings)


@given(
    strings=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=20), max_size=5)
    | st.text(max_size=30),
    wrapped=st.booleans(),
)
def test_texts_of_json_strings(strings: Any, wrapped: bool) -> None:
    body = json.dumps({"inputs": strings} if wrapped else strings).encode()
    check_texts(as_torchserve_hands_it(body, "application/json"), 3)


# ----- vision.pixels ---------------------------------------------------------------------------
image_options = st.builds(
    lambda side, resize, mode, mean, std, resample: ImageOptions(
        image_size=side,
        resize=resize and max(resize, side),
        mode=mode,
        mean=(mean,) * MODES[mode],
        std=(std,) * MODES[mode],
        resample=resample,
        max_pixels=250_000,
    ),
    st.sampled_from([1, 3, 8, 16]),
    st.sampled_from([0, 1, 10, 40]),
    st.sampled_from(sorted(MODES)),
    st.sampled_from([0.0, 0.5, 0.485]),
    st.sampled_from([1.0, 0.229, 1e-3]),
    st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos", "box"]),
)


def check_pixels(data: bytes, options: ImageOptions) -> None:
    array = outcome(lambda: pixels(data, options))
    if array is None:
        return
    channels, side = MODES[options.mode], options.image_size
    assert array.shape == (channels, side, side) and array.dtype == np.float32
    assert np.isfinite(array).all()
    assert array.flags.c_contiguous
    for channel in range(channels):
        mean, std = options.mean[channel], options.std[channel]
        low, high = (0.0 - mean) / std, (1.0 - mean) / std
        slack = 1e-6 * max(1.0, abs(low), abs(high))
        assert low - slack <= array[channel].min() and array[channel].max() <= high + slack


@given(data=st.binary(max_size=400), options=image_options)
def test_pixels_of_any_bytes(data: bytes, options: ImageOptions) -> None:
    check_pixels(data, options)


@given(data=mutated(seeds(*IMAGE_TARGETS)), options=image_options)
def test_pixels_of_mutated_images(data: bytes, options: ImageOptions) -> None:
    check_pixels(data, options)


@pytest.mark.parametrize(
    "kept",
    [p for target in IMAGE_TARGETS for p in corpus(target)],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kept_images(kept: Path, mode: str) -> None:
    for resize in (0, 10):
        opts = ImageOptions(
            image_size=8, resize=resize, mode=mode, mean=(0.5,) * MODES[mode],
            std=(0.25,) * MODES[mode], max_pixels=250_000,
        )  # fmt: skip
        check_pixels(kept.read_bytes(), opts)


@pytest.mark.parametrize(
    "kept", [*corpus("kinds_tensors"), *corpus("iris"), *corpus("minilm")], ids=lambda p: p.name
)
def test_kept_inputs(kept: Path) -> None:
    body = kept.read_bytes()
    for decode in (True, False):
        payload = as_torchserve_hands_it(body, "application/json", decode)
        value = outcome(payload.json)
        check_row(value, TabularOptions(features=4))
        check_tensor(value, TensorOptions())
        check_tensor(value, TensorOptions(input_shape=(2, 3), input_dtype="int32"))
        check_texts(payload, 3)

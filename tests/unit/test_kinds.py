"""The kinds' handlers on users' own models (``servekit.runtime.tabular``, ``vision``, ``text``,
``tensors``), each run in-process through TorchServe's worker code: good requests answered
right, every bad one its own 4xx JSON beside them, bad options refused at initialize."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from servekit.runtime import outputs
from servekit.runtime.vision import ImageOptions, pixels
from servekit.serve.harness import LocalModel, ModelLoadFailed, Request
from tests.unit.test_batch_contract import model_dir
from tests.unit.test_handlers import assert_error

ROOT = Path(__file__).resolve().parent.parent.parent
MINILM = ROOT / "build" / "models" / "minilm"
needs_minilm = pytest.mark.skipif(
    not (MINILM / "config.json").is_file(),
    reason="build/models/minilm is made by `make models-local`",
)


def kind_handler(module: str, base: str) -> str:
    """What ``servekit new-model`` writes: a subclass that says only what differs (nothing)."""
    return f"from servekit.runtime.{module} import {base}\n\n\nclass Model({base}):\n    pass\n"


TABULAR = kind_handler("tabular", "TabularHandler")
VISION = kind_handler("vision", "ImageClassifierHandler")
EMBEDDING = kind_handler("text", "TextEmbeddingHandler")
CLASSIFIER = kind_handler("text", "TextClassifierHandler")
CUSTOM = kind_handler("tensors", "TensorHandler")


def options(**values: Any) -> str:
    """``handler:`` options as ``model_dir`` takes them (YAML lines; JSON is YAML)."""
    return ";".join(f"{key}: {json.dumps(value)}" for key, value in values.items())


def serve(
    directory: Path, name: str, source: str, opts: dict[str, Any], files: dict[str, Any]
) -> LocalModel:
    """A model directory of one kind's handler, its options and files, loaded by the worker."""
    model_dir(directory, name, source, options(**opts))
    for file_name, content in files.items():
        target = directory / file_name
        if isinstance(content, torch.nn.Module):
            torch.jit.save(torch.jit.script(content), target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(json.dumps(content))
    return LocalModel(directory, batch_size=8)


def fixed_linear(weight: list[list[float]], bias: list[float] | None = None) -> torch.nn.Linear:
    rows, cols = len(weight), len(weight[0])
    layer = torch.nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias or [0.0] * rows))
    return layer.eval()


def softmax(values: list[float]) -> list[float]:
    return torch.softmax(torch.tensor(values, dtype=torch.float32), dim=0).tolist()


# ----- tabular ---------------------------------------------------------------------------------
IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
TABULAR_OPTIONS = {
    "weights": "model.ts",
    "weights_format": "torchscript",
    "features": 3,
    "feature_names": ["a", "b", "c"],
}


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    files = {"model.ts": fixed_linear(IDENTITY), "labels.json": ["low", "mid", "high"]}
    directory = tmp_path_factory.mktemp("tabular")
    with serve(directory, "rows", TABULAR, TABULAR_OPTIONS, files) as model:
        yield model


TABULAR_GOOD = [
    (Request.json({"features": [0, 0, 5]}), "high", [0.0, 0.0, 5.0]),
    (Request.json([3, 1, 0.5]), "low", [3.0, 1.0, 0.5]),
    (Request.json({"c": 1, "b": 2.5, "a": -1}), "mid", [-1.0, 2.5, 1.0]),
]
TABULAR_BAD = [
    (Request.json({"features": [1, 2]}), 400, "list of 3 numbers; got a list of 2"),
    (Request.json({"features": [1, "x", 3]}), 400, "feature 1 (b) is 'x'"),
    (Request.json([1, 2, 1e7]), 400, "feature 2 (c) is 10000000.0; expected a finite number"),
    (Request.json({"a": 1, "b": 2}), 400, "needs 'features' or all of a, b, c; got keys: a, b"),
    (Request.json([1, True, 3]), 400, "feature 1 (b) is True"),
    (Request.json("1,2,3"), 400, "features must be a list of 3 numbers; got str"),
    (Request.raw(b"[1, 2, NaN]", "application/json"), 400, "JSON number at $[2] is NaN"),
    (Request.raw(b"", "application/json"), 400, "empty"),
    (Request.raw(b"[1, 2", "application/json"), 400, "not valid JSON"),
]


def test_tabular_classifies_with_the_labels(tabular: LocalModel) -> None:
    replies = tabular.predict([request for request, _, _ in TABULAR_GOOD])
    for reply, (_, label, logits) in zip(replies, TABULAR_GOOD, strict=True):
        assert reply.status == 200, reply.body
        body = reply.json()
        assert body["label"] == label
        assert list(body["probabilities"]) == ["low", "mid", "high"]
        assert list(body["probabilities"].values()) == pytest.approx(softmax(logits), abs=1e-6)


@pytest.mark.parametrize("position", range(len(TABULAR_BAD)))
def test_tabular_bad_requests_fail_alone(tabular: LocalModel, position: int) -> None:
    bad, status, fragment = TABULAR_BAD[position]
    good = [request for request, _, _ in TABULAR_GOOD]
    replies = tabular.predict([good[0], bad, good[1], good[2]])
    assert_error(replies[1], status, fragment)
    labels = [replies[i].json()["label"] for i in (0, 2, 3)]
    assert labels == [label for _, label, _ in TABULAR_GOOD]


def test_tabular_batch_of_only_bad_requests(tabular: LocalModel) -> None:
    replies = tabular.predict([request for request, _, _ in TABULAR_BAD[:8]])
    for reply, (_, status, fragment) in zip(replies, TABULAR_BAD, strict=False):
        assert_error(reply, status, fragment)
    assert tabular.describe()["status"] == "ready"


def test_tabular_describe_shows_the_schema_and_weights(tabular: LocalModel) -> None:
    described = tabular.describe()
    assert described["labels"] == ["low", "mid", "high"]
    assert described["weights"] == {"file": "model.ts", "format": "torchscript"}
    assert "list of 3 numbers in order ['a', 'b', 'c']" in json.dumps(described["input_schema"])


def export_program(module: torch.nn.Module, width: int) -> bytes:
    buffer = io.BytesIO()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.zeros(2, width),), dynamic_shapes=({0: batch},))
    torch.export.save(program, buffer)
    return buffer.getvalue()


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["export", "state-dict", "safetensors"])
def test_tabular_regression_from_each_weights_format(tmp_path: Path, fmt: str) -> None:
    layer = fixed_linear([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], [0.5, 0.0])  # a + b + 0.5, 2c
    files: dict[str, Any] = {}
    opts: dict[str, Any] = {"weights_format": fmt, "features": 3, "task": "regression"}
    if fmt == "export":
        files["model.pt2"], opts["weights"] = export_program(layer, 3), "model.pt2"
    elif fmt == "state-dict":
        files["model.pt"], opts["weights"] = state_dict_bytes(layer), "model.pt"
    else:
        save_file(layer.state_dict(), str(tmp_path / "model.safetensors"))
        opts["weights"] = "model.safetensors"
    if fmt != "export":
        opts |= {"module": "torch.nn:Linear", "module_args": "[3, 2]"}
    with serve(tmp_path, "regress", TABULAR, opts, files) as model:
        replies = model.predict(
            [Request.json([1, 2, 3]), Request.json([1]), Request.json([0, 0, 0])]
        )
    assert replies[0].json() == {"outputs": [3.5, 6.0]}
    assert_error(replies[1], 400, "list of 3 numbers; got a list of 1")
    assert replies[2].json() == {"outputs": [0.5, 0.0]}


# ----- image classifier ------------------------------------------------------------------------
def png(array: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return out.getvalue()


def by_hand(image: np.ndarray, side: int, resize: int) -> np.ndarray:
    """Nearest-neighbour resize and centre crop, written out: the source pixel under each
    output pixel's centre (what torchvision's Resize(resize) + CenterCrop(side) keep)."""
    height, width = image.shape[:2]
    if resize:
        crop_w = crop_h = side * min(height, width) / resize
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    cols = [int(left + (i + 0.5) * crop_w / side) for i in range(side)]
    rows = [int(top + (j + 0.5) * crop_h / side) for j in range(side)]
    return image[np.ix_(rows, cols)]


GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5  # 8 wide, 6 high, every pixel distinct


@pytest.mark.parametrize(("side", "resize"), [(2, 4), (4, 6), (3, 3), (4, 0), (5, 10)])
def test_pixels_resize_and_crop_as_computed_by_hand(side: int, resize: int) -> None:
    opts = ImageOptions(
        image_size=side, resize=resize, mode="L", mean=(0.25,), std=(0.5,), resample="nearest"
    )
    array = pixels(png(GREY, "L"), opts)
    expected = (by_hand(GREY, side, resize) / 255.0 - 0.25) / 0.5
    assert array.shape == (1, side, side) and array.dtype == np.float32
    np.testing.assert_allclose(array[0], expected, rtol=1e-6, atol=1e-6)


def test_pixels_normalize_each_rgb_channel_with_its_own_mean_and_std() -> None:
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    image[:, :8] = (255, 0, 51)  # left half
    image[:, 8:] = (0, 102, 255)  # right half
    opts = ImageOptions(image_size=8, resize=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    array = pixels(png(image, "RGB"), opts)
    assert array.shape == (3, 8, 8)
    left = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, 0.2 / 2.0]
    right = [(0.0 - 0.5) / 0.5, (0.4 - 0.25) / 0.25, 1.0 / 2.0]
    for channel in range(3):  # the crop keeps columns 4..11: half red, half blue
        np.testing.assert_allclose(array[channel, :, :4], left[channel], atol=1e-6)
        np.testing.assert_allclose(array[channel, :, 4:], right[channel], atol=1e-6)


def test_pixels_convert_grey_palette_and_alpha_images_to_the_mode() -> None:
    grey = np.full((5, 5), 128, dtype=np.uint8)
    rgba = np.zeros((5, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    opts = ImageOptions(image_size=4, resize=0, mean=(0.0,) * 3, std=(1.0,) * 3)
    as_rgb = pixels(png(grey, "L"), opts)
    np.testing.assert_allclose(as_rgb, 128 / 255, atol=1e-6)  # grey: the same in 3 channels
    red = pixels(png(rgba, "RGBA"), opts)
    np.testing.assert_allclose(red[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(red[1:], 0.0, atol=1e-6)


class Flat(torch.nn.Module):
    """Every normalized pixel is a class score: the ranking shows what preprocessing made."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


VISION_OPTIONS = {
    "weights": "flat.ts",
    "weights_format": "torchscript",
    "image_size": 2,
    "resize": 4,
    "mode": "L",
    "mean": [0.5],
    "std": [0.25],
    "resample": "nearest",
    "top_k": 3,
    "max_image_bytes": 5000,
    "max_pixels": 10_000,
}


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    files = {"flat.ts": Flat(), "labels.json": ["top-left", "top-right", "low-left", "low-right"]}
    directory = tmp_path_factory.mktemp("vision")
    with serve(directory, "quadrants", VISION, VISION_OPTIONS, files) as model:
        yield model


def vision_answer(image: np.ndarray) -> dict[str, Any]:
    scores = ((by_hand(image, 2, 4) / 255.0 - 0.5) / 0.25).flatten().tolist()
    order = sorted(range(4), key=lambda i: -scores[i])[:3]
    names = ["top-left", "top-right", "low-left", "low-right"]
    probabilities = softmax(scores)
    return {
        "label": names[order[0]],
        "class_id": order[0],
        "top_k": [
            {"label": names[i], "class_id": i, "probability": round(probabilities[i], 6)}
            for i in order
        ],
    }


def jpeg_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, "L").save(out, "JPEG")
    return out.getvalue()


def truncated_png() -> bytes:
    data = png(np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8), "L")
    return data[: len(data) // 2]


VISION_BAD = [
    (Request.raw(b"plain bytes, not pixels", "application/octet-stream"), 415, "not an image"),
    (Request.raw(b"plain text, not base64!", "text/plain"), 400, "not valid base64"),
    (Request.raw(b"", "image/png"), 400, "is empty"),
    (Request.raw(truncated_png(), "image/png"), 400, "truncated or corrupt"),
    (Request.raw(png(np.zeros((200, 200), np.uint8), "L"), "image/png"), 413, "200x200 pixels"),
    (Request.raw(bytes(6000), "application/octet-stream"), 413, "the limit is 5000"),
    (Request.json({"b64": "!!!"}), 400, "base64"),
    (Request.json([1, 2, 3]), 400, "holds JSON list"),
]


def test_image_classifier_answers_what_the_preprocessing_computes(vision: LocalModel) -> None:
    flipped = GREY[::-1, ::-1].copy()
    requests = [
        Request.raw(png(GREY, "L"), "image/png"),
        Request.raw(base64.b64encode(png(flipped, "L")), "text/plain"),
        Request.json({"b64": base64.b64encode(png(GREY, "L")).decode()}),
    ]
    replies = vision.predict(requests)
    assert [r.status for r in replies] == [200, 200, 200], [r.body for r in replies]
    assert replies[0].json() == vision_answer(GREY)
    assert replies[0].json()["label"] == "low-right"
    assert replies[1].json() == vision_answer(flipped)
    assert replies[2].json() == vision_answer(GREY)


@pytest.mark.parametrize("position", range(len(VISION_BAD)))
def test_image_classifier_bad_requests_fail_alone(vision: LocalModel, position: int) -> None:
    bad, status, fragment = VISION_BAD[position]
    good = Request.raw(png(GREY, "L"), "image/png")
    replies = vision.predict([good, bad, Request.raw(jpeg_bytes(GREY), "image/jpeg")])
    assert_error(replies[1], status, fragment)
    assert replies[0].json() == vision_answer(GREY)
    assert replies[2].status == 200 and replies[2].json()["label"] == "low-right"


# ----- custom (tensors) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    directory = tmp_path_factory.mktemp("echo")
    with serve(directory, "echo", CUSTOM, {"input_shape": [2, 3], "max_elements": 6}, {}) as model:
        yield model


CUSTOM_BAD = [
    (Request.json([[1, 2, 3]]), 400, "has shape [1, 3]; expected [2, 3]"),
    (Request.json([[1, 2, 3], [4, 5]]), 400, "not a rectangular array"),
    (Request.json([[1, 2, 3], [4, 5, "6"]]), 400, "holds '6'; expected numbers"),
    (Request.json([[1, 2, 3], [4, 5, True]]), 400, "holds True"),
    (Request.json({"values": [1]}), 400, "needs the key 'inputs'"),
    (Request.json([[]]), 400, "holds no numbers"),
    (Request.json([[1, 2, 3], [4, 5, 6], [7]]), 413, "more than 6"),
    (Request.json([[1, 2, 3], [4, 5, 1e39]]), 400, "within ±1e+06 (max_abs_value)"),
    (Request.raw(b"[[1, 2, 3], [4, 5, Infinity]]", "application/json"), 400, "Infinity"),
]


def test_custom_without_weights_echoes_its_input(echo: LocalModel) -> None:
    tensors = [[[1, 2, 3], [4, 5, 6]], [[0.5, 0, -1], [1e3, 2, 3]]]
    replies = echo.predict([Request.json(tensors[0]), Request.json({"inputs": tensors[1]})])
    assert [r.json() for r in replies] == [{"outputs": tensors[0]}, {"outputs": tensors[1]}]
    assert echo.describe()["weights"] == {"file": "", "format": ""}


@pytest.mark.parametrize("position", range(len(CUSTOM_BAD)))
def test_custom_bad_requests_fail_alone(echo: LocalModel, position: int) -> None:
    bad, status, fragment = CUSTOM_BAD[position]
    good = [[1, 2, 3], [4, 5, 6]]
    replies = echo.predict([Request.json(good), bad, Request.json({"inputs": good})])
    assert_error(replies[1], status, fragment)
    assert [replies[0].json(), replies[2].json()] == [{"outputs": good}] * 2


def test_custom_without_a_shape_runs_each_shape_alone(tmp_path: Path) -> None:
    with serve(tmp_path, "anyshape", CUSTOM, {"input_dtype": "int64"}, {}) as model:
        replies = model.predict([Request.json([1, 2]), Request.json([[3]]), Request.json([1.5])])
    assert [r.json() for r in replies[:2]] == [{"outputs": [1, 2]}, {"outputs": [[3]]}]
    assert_error(replies[2], 400, "holds 1.5; expected int64")


def test_custom_with_a_model_answers_its_output(tmp_path: Path) -> None:
    files = {"double.ts": fixed_linear([[2.0, 0.0], [0.0, 2.0]])}
    opts = {"weights": "double.ts", "weights_format": "torchscript", "input_shape": [2]}
    with serve(tmp_path, "double", CUSTOM, opts, files) as model:
        replies = model.predict([Request.json([1, 2]), Request.json([1, 2, 3])])
    assert replies[0].json() == {"outputs": [2.0, 4.0]}
    assert_error(replies[1], 400, "has shape [3]; expected [2]")


def test_an_answer_past_max_response_size_is_a_413_not_a_dead_worker(tmp_path: Path) -> None:
    """Past the frontend's max_response_size (6,553,500 bytes by default) the frontend drops the
    worker's connection and the worker dies: the handler answers 413 first (found by review:
    an echo of [[0]*1000]*1000 killed the worker over HTTP)."""
    opts = {"max_elements": 1_000_000, "max_response_bytes": 2_000_000}
    with serve(tmp_path, "wide", CUSTOM, opts, {}) as model:
        big = [[0.0] * 1000] * 400  # about 4.8 MB as TorchServe writes it (indent=2)
        replies = model.predict([Request.json(big), Request.json([1.0, 2.0])])
    assert_error(replies[0], 413, "would be")
    assert "max_response_size" in replies[0].json()["message"]
    assert replies[1].json() == {"outputs": [1.0, 2.0]}


def test_custom_refuses_values_past_max_abs_value(tmp_path: Path) -> None:
    """A float32 model overflows on 3e38 (found by review: a 500 from a valid-looking input)."""
    files = {"double.ts": fixed_linear([[2.0, 0.0], [0.0, 2.0]])}
    opts = {"weights": "double.ts", "weights_format": "torchscript", "input_shape": [2]}
    with serve(tmp_path, "double", CUSTOM, opts, files) as model:
        replies = model.predict([Request.json([3e38, 1.0]), Request.json([1.0, 1.0])])
    assert_error(replies[0], 400, "within ±1e+06")
    assert replies[1].json() == {"outputs": [2.0, 2.0]}


# ----- text ------------------------------------------------------------------------------------
def hf_dir(directory: Path) -> dict[str, bytes]:
    """The packaged MiniLM's files, to go beside the handler in a model directory."""
    return {p.name: p.read_bytes() for p in MINILM.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    if not (MINILM / "config.json").is_file():
        pytest.skip("build/models/minilm is made by `make models-local`")
    directory = tmp_path_factory.mktemp("embedding")
    opts = {"max_tokens": 32, "max_chars": 200, "max_strings_per_request": 3}
    with serve(directory, "minilm_kind", EMBEDDING, opts, hf_dir(directory)) as model:
        yield model


TEXT_BAD = [
    (Request.json({"inputs": "   "}), 400, "the string is empty"),
    (Request.json({"text": "hello"}), 400, "needs the key 'inputs'"),
    (Request.json(["fine", 3]), 400, "string 1 is int; expected a string"),
    (Request.json([]), 400, "the list of strings is empty"),
    (Request.json(["a", "b", "c", "d"]), 413, "holds 4 strings; the limit is 3"),
    (Request.json("x" * 201), 413, "has 201 characters; the limit is 200"),
    (Request.json("word " * 40), 413, "tokens; the limit is 32"),
    (Request.json(12), 400, "expected a string or a list of strings; got int"),
    (Request.raw(b"\xff\xfe", "application/json"), 400, "UTF-8"),
]
FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."


@needs_minilm
def test_text_embedding_cosine_of_two_sentences(embedding: LocalModel) -> None:
    replies = embedding.predict([Request.json(FOOD), Request.json({"inputs": [BREAD, FOOD]})])
    one, pair = replies[0].json(), replies[1].json()
    assert one["tokens"] == 8 and len(one["embedding"]) == 384
    food, bread = np.array(one["embedding"]), np.array(pair["embeddings"][0])
    assert np.linalg.norm(food) == pytest.approx(1.0, abs=1e-5)
    assert float(food @ bread) == pytest.approx(0.755, abs=0.005)
    np.testing.assert_allclose(pair["embeddings"][1], one["embedding"], atol=1e-5)
    assert pair["tokens"][1] == 8


@needs_minilm
def test_text_embedding_plain_text_body(embedding: LocalModel) -> None:
    replies = embedding.predict([Request.text(FOOD), Request.json(FOOD)])
    np.testing.assert_allclose(replies[0].json()["embedding"], replies[1].json()["embedding"])


@needs_minilm
@pytest.mark.parametrize("position", range(len(TEXT_BAD)))
def test_text_bad_requests_fail_alone(embedding: LocalModel, position: int) -> None:
    bad, status, fragment = TEXT_BAD[position]
    replies = embedding.predict([Request.json(FOOD), bad, Request.json([BREAD])])
    assert_error(replies[1], status, fragment)
    assert replies[0].json()["tokens"] == 8
    assert len(replies[2].json()["embeddings"]) == 1


@needs_minilm
def test_text_classifier_refuses_an_encoder_only_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed) as caught:
        serve(tmp_path, "not_a_classifier", CLASSIFIER, {}, hf_dir(tmp_path))
    message = str(caught.value)
    assert "lack classifier." in message, message
    assert "without a trained classification head" in message
    assert "text-embedding kind" in message


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A small BERT sequence classifier with MiniLM's tokenizer and named classes."""
    if not (MINILM / "config.json").is_file():
        pytest.skip("build/models/minilm is made by `make models-local`")
    import transformers

    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
        id2label={0: "sport", 1: "food", 2: "music"},
        label2id={"sport": 0, "food": 1, "music": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("classifier-files")
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(str(MINILM)).save_pretrained(directory)
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def direct_probabilities(directory: Path, text: str) -> list[float]:
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokens = transformers.AutoTokenizer.from_pretrained(directory)(text, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**tokens).logits[0], dim=0).tolist()


@needs_minilm
def test_text_classifier_answers_its_classes(
    tmp_path: Path, classifier_files: dict[str, bytes]
) -> None:
    opts = {"max_tokens": 16, "top_k": 2}
    with serve(tmp_path, "topics", CLASSIFIER, opts, classifier_files) as model:
        replies = model.predict(
            [Request.json(FOOD), Request.json(""), Request.json({"inputs": [BREAD, FOOD]})]
        )
        described = model.describe()
    expected = direct_probabilities(tmp_path, FOOD)
    names = ["sport", "food", "music"]
    order = sorted(range(3), key=lambda i: -expected[i])[:2]
    one = replies[0].json()
    assert one["label"] == names[order[0]]
    assert one["score"] == pytest.approx(expected[order[0]], abs=1e-5)
    assert list(one["probabilities"]) == [names[i] for i in order]
    assert_error(replies[1], 400, "is empty")
    assert replies[2].json()["results"][1] == one
    assert described["labels"] == names


@needs_minilm
def test_text_classifier_labels_file_must_match_its_head(
    tmp_path: Path, classifier_files: dict[str, bytes]
) -> None:
    files: dict[str, Any] = {**classifier_files, "labels.json": ["yes", "no"]}
    with pytest.raises(ModelLoadFailed, match=r"gives 3 classes but labels\.json names 2"):
        serve(tmp_path, "topics", CLASSIFIER, {"max_tokens": 16}, files)


# ----- options and labels fail initialize, naming what is wrong --------------------------------
SQUARE = fixed_linear(IDENTITY)
OPTION_ERRORS = [
    (TABULAR, {**TABULAR_OPTIONS, "task": "clustering"}, "'task' is 'clustering'; allowed"),
    (TABULAR, {**TABULAR_OPTIONS, "features": 0}, "'features' is 0; it must be 1.."),
    (TABULAR, {**TABULAR_OPTIONS, "feature_names": ["a", "a", "b"]}, "'feature_names' holds 3"),
    (TABULAR, {**TABULAR_OPTIONS, "max_abs_value": -1.0}, "'max_abs_value' is -1.0"),
    (TABULAR, {**TABULAR_OPTIONS, "weights_format": "onnx"}, "'weights_format' is 'onnx'"),
    (TABULAR, {**TABULAR_OPTIONS, "weights_format": "state-dict"}, "'module' is empty"),
    (TABULAR, {**TABULAR_OPTIONS, "weights": "gone.ts"}, "'gone.ts' is missing"),
    (TABULAR, {**TABULAR_OPTIONS, "weights_format": "export"}, "is said to be a torch.export"),
    (TABULAR, {**TABULAR_OPTIONS, "featurez": 3}, "did you mean 'features'"),
    (VISION, {**VISION_OPTIONS, "image_size": 0}, "'image_size' is 0; it must be 1..4096"),
    (VISION, {**VISION_OPTIONS, "resize": 1}, "'resize' is 1; it must be 0 (no crop) or"),
    (VISION, {**VISION_OPTIONS, "mean": [0.5, 0.5]}, "'mean' holds 2 values; mode L has 1"),
    (VISION, {**VISION_OPTIONS, "mode": "RGB"}, "'mean' holds 1 values; mode RGB has 3"),
    (VISION, {**VISION_OPTIONS, "std": [0.0]}, "'std' is [0.0]; each must be > 0"),
    (VISION, {**VISION_OPTIONS, "mode": "CMYK"}, "'mode' is 'CMYK'; allowed: RGB, L"),
    (VISION, {**VISION_OPTIONS, "resample": "cubic"}, "'resample' is 'cubic'; allowed"),
    (VISION, {**VISION_OPTIONS, "top_k": 0}, "'top_k' is 0; it must be >= 1"),
    (CUSTOM, {"input_shape": [2, 0]}, "'input_shape' is [2, 0]"),
    (CUSTOM, {"input_dtype": "float16"}, "'input_dtype' is 'float16'; allowed: float32"),
    (CUSTOM, {"max_elements": 0}, "'max_elements' is 0; it must be >= 1"),
    (EMBEDDING, {"pooling": "max"}, "'pooling' is 'max'; allowed: mean, cls"),
    (EMBEDDING, {"weights_format": "torchscript"}, "the text kinds read a Hugging Face"),
    (EMBEDDING, {"group_size": 0}, "'group_size' is 0; it must be >= 1"),
    (CLASSIFIER, {"top_k": -1}, "'top_k' is -1; it must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "opts", "fragment"), OPTION_ERRORS)
def test_bad_options_fail_initialize_naming_the_option(
    tmp_path: Path, source: str, opts: dict[str, Any], fragment: str
) -> None:
    files = {"model.ts": SQUARE, "flat.ts": Flat()}
    with pytest.raises(ModelLoadFailed) as caught:
        serve(tmp_path, "badopts", source, opts, files)
    assert fragment in str(caught.value)


@needs_minilm
def test_max_tokens_past_the_model_fails_initialize(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="'max_tokens' is 1024; the model reads at most 512"):
        serve(tmp_path, "long", EMBEDDING, {"max_tokens": 1024}, hf_dir(tmp_path))


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (["low", "high"], "the model gives 3 classes but labels.json names 2"),
        ({"0": "low"}, "labels.json must be a JSON list of class names"),
        (b'["low", ', "labels.json is not JSON"),
        ([1, 2, 3], "labels.json must be a JSON list of class names"),
    ],
)
def test_labels_that_do_not_fit_fail_initialize(tmp_path: Path, labels: Any, fragment: str) -> None:
    files = {"model.ts": SQUARE, "labels.json": labels}
    with pytest.raises(ModelLoadFailed) as caught:
        serve(tmp_path, "labelled", TABULAR, TABULAR_OPTIONS, files)
    assert fragment in str(caught.value)


# ----- what every kind does with a model's output (servekit.runtime.outputs) -------------------
class Sqrt(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)  # NaN below 0


def test_a_non_finite_output_fails_only_its_own_request(tmp_path: Path) -> None:
    opts = {"weights": "sqrt.ts", "weights_format": "torchscript", "input_shape": [2]}
    with serve(tmp_path, "roots", CUSTOM, opts, {"sqrt.ts": Sqrt()}) as model:
        replies = model.predict([Request.json([1, 4]), Request.json([-1, 1]), Request.json([0, 9])])
        assert model.describe()["status"] == "ready"
    assert [r.status for r in replies] == [200, 500, 200]
    assert [replies[0].json(), replies[2].json()] == [
        {"outputs": [1.0, 2.0]},
        {"outputs": [0.0, 3.0]},
    ]
    assert_error(replies[1], 500, "Internal error")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (torch.ones(2, 3), torch.ones(2, 3)),
        ((torch.zeros(2, 1), torch.ones(2, 5)), torch.zeros(2, 1)),
        ({"last_hidden_state": torch.ones(1), "logits": torch.zeros(1)}, torch.zeros(1)),
        ({"last_hidden_state": torch.ones(1), "other": torch.zeros(1)}, torch.ones(1)),
        ({"scores": torch.full((1,), 2.0)}, torch.full((1,), 2.0)),
    ],
)
def test_first_tensor_finds_the_main_output(output: Any, expected: torch.Tensor) -> None:
    assert torch.equal(outputs.first_tensor(output), expected)


@pytest.mark.parametrize("output", [None, [], {}, "logits", [1.0, 2.0], {"logits": [1.0]}])
def test_first_tensor_names_what_came_instead(output: Any) -> None:
    with pytest.raises(TypeError, match=f"the model returned {type(output).__name__}, not a"):
        outputs.first_tensor(output)


def test_as_rows_shapes_and_checks() -> None:
    assert outputs.as_rows(torch.tensor([1, 2])).tolist() == [[1.0], [2.0]]
    assert outputs.as_rows(torch.ones(2, 3, 4)).shape == (2, 12)
    assert outputs.as_rows(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="a single number for the whole batch"):
        outputs.as_rows(torch.tensor(1.0))
    with pytest.raises(outputs.NonFiniteOutput, match=r"model output \(2, 2\) holds NaN"):
        outputs.as_rows(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(outputs.NonFiniteOutput):
        outputs.as_rows(torch.tensor([float("inf")]))


def test_class_names_and_ranking() -> None:
    assert outputs.class_names(None, 3) == ["0", "1", "2"]
    assert outputs.class_names(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match=r"gives 3 classes but labels\.json names 2"):
        outputs.class_names(["a", "b"], 3)
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    top = outputs.ranked(probabilities, ["a", "b", "c"], top_k=2)
    assert [[c["label"] for c in row] for row in top] == [["b", "c"], ["a", "c"]]
    assert top[0][0] == {"label": "b", "class_id": 1, "probability": pytest.approx(0.7)}
    assert [len(row) for row in outputs.ranked(probabilities, ["a", "b", "c"], 10)] == [3, 3]

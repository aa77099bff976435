"""The EfficientNet-Lite0 ImageNet handler, in-process, on scikit-learn's sample photos."""

from __future__ import annotations

import base64
import functools
import io
import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_sample_image

from servekit.serve.harness import LocalModel, Reply, Request
from servekit.serve.settings import archived_setting
from tests.conftest import ROOT

BATCH_SIZES = [1, 2, 5, 8]
# What a temple on a lake and a daisy with a bee may plausibly be called in ImageNet-1k.
PLAUSIBLE = {
    "china.jpg": {"palace", "bell tower", "monastery", "castle", "Chinese temple", "pagoda"},
    "flower.jpg": {"daisy"},
}


@functools.cache
def photo(name: str, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(load_sample_image(name)).convert(mode).save(out, format=fmt)
    return out.getvalue()


def jpeg(name: str) -> Request:
    return Request.raw(photo(name), "image/jpeg")


BAD = [
    (Request.raw(b"GIF89a but not really", "image/gif"), 415, "not an image PIL can read"),
    (Request.raw(b"plain bytes, no image"), 415, "not an image PIL can read"),
    (Request.raw(b"plain text, no image", "text/plain"), 400, "is not valid base64"),
    (Request.raw(photo("china.jpg")[:2000], "image/jpeg"), 400, "truncated or corrupt"),
    (Request.raw(b"", "image/jpeg"), 400, "request body is empty"),
    (Request.json({"image": "nope"}), 400, "has no base64 field"),
]


@pytest.fixture(scope="module")
def efficientnet(model_store: Path) -> Iterator[LocalModel]:
    with LocalModel.from_mar(model_store / "efficientnet.mar") as model:
        yield model


@pytest.fixture(scope="module")
def singles(efficientnet: LocalModel) -> dict[str, dict[str, Any]]:
    """Each photo classified alone: the reference for every batched answer."""
    return {name: ok(efficientnet.predict([jpeg(name)])[0]) for name in PLAUSIBLE}


def ok(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


def assert_same(body: dict[str, Any], reference: dict[str, Any]) -> None:
    assert [c["class_id"] for c in body["top_k"]] == [c["class_id"] for c in reference["top_k"]]
    for got, want in zip(body["top_k"], reference["top_k"], strict=True):
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)


def assert_error(reply: Reply, status: int, fragment: str) -> None:
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["code"] == status
    assert fragment in body["message"], body["message"]


@pytest.mark.parametrize("name", sorted(PLAUSIBLE))
def test_sample_photos_get_plausible_top5(singles: dict[str, dict[str, Any]], name: str) -> None:
    body = singles[name]
    labels = [c["label"] for c in body["top_k"]]
    assert len(labels) == 5
    assert body["label"] == labels[0] and body["class_id"] == body["top_k"][0]["class_id"]
    assert labels[0] in PLAUSIBLE[name], labels
    probabilities = [c["probability"] for c in body["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.15 < probabilities[0] <= 1.0


def test_china_is_a_palace_and_flower_a_daisy(singles: dict[str, dict[str, Any]]) -> None:
    assert singles["china.jpg"]["label"] == "palace"
    assert singles["flower.jpg"]["label"] == "daisy"


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batches_equal_single_results(
    efficientnet: LocalModel, singles: dict[str, dict[str, Any]], size: int
) -> None:
    names = list(itertools.islice(itertools.cycle(sorted(PLAUSIBLE)), size))
    replies = efficientnet.predict([jpeg(name) for name in names])
    for reply, name in zip(replies, names, strict=True):
        assert_same(ok(reply), singles[name])


@pytest.mark.parametrize("mix", ["b", "gb", "bg", "gbg", "bbgg", "gbgbgbgb", "bbbbbbbb"])
def test_mixed_batches_answer_each_request(
    efficientnet: LocalModel, singles: dict[str, dict[str, Any]], mix: str
) -> None:
    good, bad = itertools.cycle(sorted(PLAUSIBLE)), itertools.cycle(BAD)
    plan: list[tuple[Request, int, str]] = []
    for kind in mix:
        if kind == "g":
            name = next(good)
            plan.append((jpeg(name), 200, name))
        else:
            plan.append(next(bad))
    replies = efficientnet.predict([request for request, _, _ in plan])
    assert len(replies) == len(mix)
    for reply, (_, status, expected) in zip(replies, plan, strict=True):
        if status == 200:
            assert_same(ok(reply), singles[expected])
        else:
            assert_error(reply, status, expected)


def test_png_greyscale_rgba_and_base64_inputs(efficientnet: LocalModel) -> None:
    flower = photo("flower.jpg")
    replies = efficientnet.predict(
        [
            Request.raw(photo("flower.jpg", "PNG"), "image/png"),
            Request.raw(photo("flower.jpg", "PNG", "RGBA"), "image/png"),
            Request.raw(photo("china.jpg", "PNG", "L"), "image/png"),
            Request.json({"b64": base64.b64encode(flower).decode()}),
            Request.form(data=flower),
        ]
    )
    labels = [ok(r)["label"] for r in replies]
    assert labels[:2] == ["daisy", "daisy"]
    assert labels[2] in PLAUSIBLE["china.jpg"]
    assert labels[3:] == ["daisy", "daisy"]


def test_describe_lists_the_1000_classes(efficientnet: LocalModel) -> None:
    described = efficientnet.describe()
    assert described["status"] == "ready"
    assert described["handler"].endswith("ImagenetHandler")
    assert len(described["labels"]) == 1000
    assert described["labels"][985] == "daisy"
    assert described["batching"]["batchSize"] == archived_setting(ROOT, "efficientnet").batch_size


def test_limits_from_options_answer_413(model_store: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(model_store / "efficientnet.mar") as archive:
        archive.extractall(tmp_path)
    config_file = tmp_path / "model-config.yml"
    config = yaml.safe_load(config_file.read_text())
    config["handler"] |= {"top_k": 2, "max_pixels": 100_000, "max_image_bytes": 100_000}
    config_file.write_text(yaml.safe_dump(config))
    model = LocalModel(tmp_path)
    small = Image.fromarray(load_sample_image("china.jpg")).resize((380, 253))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG")
    replies = model.predict(
        [
            jpeg("china.jpg"),  # 640x427 = 273,280 pixels
            Request.raw(photo("china.jpg", "PNG"), "image/png"),  # about 490 kB
            Request.raw(buffer.getvalue(), "image/jpeg"),
        ]
    )
    assert_error(replies[0], 413, "image is 640x427 pixels; the limit is 100000")
    assert_error(replies[1], 413, "the limit is 100000")
    body = ok(replies[2])
    assert body["label"] == "palace" and len(body["top_k"]) == 2

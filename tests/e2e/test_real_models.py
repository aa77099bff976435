"""MiniLM embeddings and EfficientNet-Lite0 classes on a real TorchServe, with batching."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from sklearn.datasets import load_sample_image

from servekit.serve.server import TorchServe, running
from servekit.serve.settings import archived_setting
from tests.e2e.conftest import ROOT, customized, describe, every_worker, wait_ready

pytestmark = pytest.mark.e2e

MODELS = ["minilm", "efficientnet"]
FOOD, BREAD = "A man is eating food.", "A man is eating a piece of bread."


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """Only the two real models (the default config does not load them)."""
    workdir = tmp_path_factory.mktemp("torchserve-real")
    with running(ROOT / "config.properties", workdir, model_store=model_store, models=MODELS) as ts:
        wait_ready(ts, MODELS)
        yield ts


def post(server: TorchServe, model: str, body: Any, content_type: str) -> requests.Response:
    data = body if isinstance(body, bytes) else body.encode()
    return requests.post(
        f"{server.inference_url}/predictions/{model}",
        data=data,
        headers={"Content-Type": content_type},
        timeout=60,
    )


def jpeg(name: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(out, format="JPEG")
    return out.getvalue()


def burst(server: TorchServe, model: str, bodies: list[tuple[bytes, str]]) -> list[Any]:
    """Send every body at once (threads released together) so the frontend batches them."""
    start = threading.Barrier(len(bodies))

    def send(item: tuple[bytes, str]) -> requests.Response:
        start.wait()
        return post(server, model, *item)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def batched_requests(workers: list[Any]) -> int:
    """Requests these workers served in batches of two or more."""
    return sum(
        int(size) * n
        for metadata in workers
        for size, n in metadata["worker"]["batches"].items()
        if int(size) > 1
    )


def errors(workers: list[Any]) -> int:
    return sum(int(metadata["worker"]["errors"]) for metadata in workers)


@pytest.mark.parametrize("model", MODELS)
def test_models_are_ready_with_their_batch_settings(server: TorchServe, model: str) -> None:
    shipped = archived_setting(ROOT, model)  # as the spec (tuned) says
    metadata = customized(server, model)
    assert metadata["status"] == "ready"
    assert metadata["warmup"]["ran"] is True
    assert metadata["batching"]["batchSize"] == shipped.batch_size
    assert metadata["batching"]["maxBatchDelay"] == shipped.max_batch_delay
    entry = describe(server, model)
    assert len(entry["workers"]) == entry["minWorkers"] == shipped.workers


def test_minilm_reference_cosine_over_http(server: TorchServe) -> None:
    response = post(server, "minilm", f'["{FOOD}", "{BREAD}"]', "application/json")
    assert response.status_code == 200
    food, bread = np.array(response.json()["embeddings"])
    assert food.shape == (384,)
    assert float(food @ bread) == pytest.approx(0.755, abs=0.01)
    alone = post(server, "minilm", FOOD, "text/plain").json()["embedding"]
    np.testing.assert_allclose(alone, food, atol=1e-5)


def test_minilm_mixed_burst_each_request_gets_its_answer(server: TorchServe) -> None:
    reference = np.array(post(server, "minilm", FOOD, "text/plain").json()["embedding"])
    before = every_worker(server, "minilm")  # as many as the spec says
    good = (f'"{FOOD}"'.encode(), "application/json")
    bad = [
        (b'""', "application/json", 400, "request body is empty"),
        (b'["fine", 7]', "application/json", 400, "string 1 is int"),
        (f'"{"word " * 300}"'.encode(), "application/json", 413, "302 tokens; the limit is 256"),
    ]
    bodies = [good if i % 2 else bad[i // 2 % 3][:2] for i in range(12)]
    responses = burst(server, "minilm", bodies)
    for i, response in enumerate(responses):
        if i % 2:
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["embedding"], reference, atol=1e-5)
        else:
            _, _, status, fragment = bad[i // 2 % 3]
            assert response.status_code == status, response.text
            assert fragment in response.json()["message"]
    after = every_worker(server, "minilm")
    assert errors(after) == errors(before) + 6
    assert batched_requests(after) > batched_requests(before)


def test_efficientnet_sample_photos_over_http(server: TorchServe) -> None:
    labels = {}
    for name in ("china.jpg", "flower.jpg"):
        response = post(server, "efficientnet", jpeg(name), "image/jpeg")
        assert response.status_code == 200, response.text
        assert len(response.json()["top_k"]) == 5
        labels[name] = response.json()["label"]
    assert labels == {"china.jpg": "palace", "flower.jpg": "daisy"}


def test_efficientnet_mixed_burst_bad_and_good_in_one_batch(server: TorchServe) -> None:
    before = every_worker(server, "efficientnet")
    flower = (jpeg("flower.jpg"), "image/jpeg")
    not_an_image = (b"just some bytes", "application/octet-stream")
    responses = burst(server, "efficientnet", [not_an_image, flower] * 4)
    assert [r.status_code for r in responses] == [415, 200] * 4
    assert {r.json()["label"] for r in responses[1::2]} == {"daisy"}
    assert "not an image" in responses[0].json()["message"]
    after = every_worker(server, "efficientnet")
    assert errors(after) == errors(before) + 4
    assert batched_requests(after) > batched_requests(before)

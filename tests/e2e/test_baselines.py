"""The baseline servers (servekit/baselines) for real: same answers as TorchServe's handler."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from servekit.bench.baselines.runner import Baseline, running_baseline
from servekit.bench.payloads import SENTENCES
from servekit.serve.harness import LocalModel, Request

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent.parent
MAR = ROOT / "model_store" / "minilm.mar"
BAD = {"wrong": "key"}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """Each sentence's embedding from the archived handler in-process (TorchServe's worker)."""
    with LocalModel.from_mar(MAR) as model:
        replies = model.predict([Request.json(s) for s in SENTENCES[:8]])
    return {s: np.array(r.json()["embedding"]) for s, r in zip(SENTENCES, replies, strict=False)}


@pytest.fixture(scope="module", params=["starlette", "litserve"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Baseline]:
    # A long deadline so that concurrent requests surely share a batch.
    args = (
        ["--max-delay-ms", "200"] if request.param == "starlette" else ["--batch-timeout-ms", "200"]
    )
    with running_baseline(request.param, MAR, tmp_path_factory.mktemp(request.param), args) as s:
        yield s


def post(url: str, body: object) -> requests.Response:
    return requests.post(
        url, data=json.dumps(body), timeout=60, headers={"Content-Type": "application/json"}
    )


def test_one_sentence_matches_torchserve(
    server: Baseline, reference: dict[str, np.ndarray]
) -> None:
    response = post(server.predict_url, SENTENCES[1])
    assert response.status_code == 200, response.text
    vector = np.array(response.json()["embedding"])
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    np.testing.assert_allclose(vector, reference[SENTENCES[1]], atol=1e-5)


def test_concurrent_requests_with_a_bad_one(
    server: Baseline, reference: dict[str, np.ndarray]
) -> None:
    bodies: list[object] = [SENTENCES[i % 8] for i in range(12)]
    bodies[5] = BAD
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: post(server.predict_url, b), bodies))
    for body, response in zip(bodies, responses, strict=True):
        if body is BAD:
            assert response.status_code == 400
            assert response.headers["content-type"].startswith("application/json")
            assert "inputs" in response.json()["message"]
        else:
            assert response.status_code == 200, response.text
            assert isinstance(body, str)
            vector = np.array(response.json()["embedding"])
            np.testing.assert_allclose(vector, reference[body], atol=1e-5)
    if server.kind == "litserve":  # its predict logs each batch's size
        sizes = [int(m) for m in re.findall(r"^batch of (\d+)$", server.log.read_text(), re.M)]
        assert sum(sizes) >= len(bodies) and max(sizes) > 1, sizes
    if server.kind == "starlette":
        stats = requests.get(server.base_url + "/stats", timeout=10).json()
        assert max(int(size) for size in stats["batch_sizes"]) > 1, stats


def test_starlette_full_queue_answers_503(tmp_path: Path) -> None:
    # One request at a time and one waiting: the rest of a burst must be turned away at once.
    args = ["--max-batch-size", "1", "--queue-size", "1"]
    long_request = list(SENTENCES) * 2  # 48 strings: a slow forward pass
    with running_baseline("starlette", MAR, tmp_path, args) as server:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: post(server.predict_url, long_request), range(12)))
        codes = sorted(r.status_code for r in responses)
        stats = requests.get(server.base_url + "/stats", timeout=10).json()
    assert set(codes) == {200, 503}, codes
    rejected = [r for r in responses if r.status_code == 503]
    assert all(r.json()["code"] == 503 for r in rejected)
    assert stats["rejected_503"] == len(rejected)

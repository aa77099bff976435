"""End to end on a real TorchServe started from config.properties."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from servekit.datasets import digit_png, digits_split, iris_split
from servekit.serve.server import TorchServe
from servekit.serve.settings import Setting, batch_server, register
from tests.e2e.conftest import ROOT, customized, describe

pytestmark = pytest.mark.e2e


def predict(server: TorchServe, model: str, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.inference_url}/predictions/{model}", timeout=30, **kwargs)


def test_ping_is_healthy(server: TorchServe) -> None:
    response = requests.get(f"{server.inference_url}/ping", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


@pytest.mark.parametrize("model", ["iris", "digits", "empty_model"])
def test_describe_shows_ready_workers(server: TorchServe, model: str) -> None:
    entry = describe(server, model)
    assert entry["modelName"] == model
    assert [w["status"] for w in entry["workers"]] == ["READY"] * len(entry["workers"])
    assert len(entry["workers"]) >= entry["minWorkers"] >= 1


def test_iris_held_out_predictions(server: TorchServe) -> None:
    split = iris_split()
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda x: predict(server, "iris", json={"features": x.tolist()}), split.x_test)
        )
    assert {r.status_code for r in responses} == {200}
    predicted = [split.labels.index(r.json()["label"]) for r in responses]
    assert np.mean(np.array(predicted) == split.y_test) >= 0.95


def test_digits_held_out_predictions(server: TorchServe) -> None:
    split = digits_split()
    images, truth = split.x_test[:100], split.y_test[:100]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda x: predict(
                    server, "digits", data=digit_png(x), headers={"Content-Type": "image/png"}
                ),
                images,
            )
        )
    assert {r.status_code for r in responses} == {200}
    predicted = np.array([r.json()["digit"] for r in responses])
    assert np.mean(predicted == truth) >= 0.95


@pytest.mark.parametrize("model", ["iris", "digits", "empty_model"])
def test_customized_metadata(server: TorchServe, model: str) -> None:
    entry = describe(server, model)
    metadata = customized(server, model)
    assert isinstance(metadata, dict)
    assert metadata["status"] == "ready"
    assert metadata["model"] == {"name": model, "version": "1.0"}
    assert metadata["batching"]["batchSize"] == entry["batchSize"]
    assert metadata["batching"]["maxBatchDelay"] == entry["maxBatchDelay"]
    assert metadata["warmup"]["enabled"] is True
    assert {"input_schema", "output_schema", "handler", "worker"} <= metadata.keys()
    assert {"requests", "errors", "batches", "pid"} <= metadata["worker"].keys()
    assert metadata["worker"]["pid"] in [w["pid"] for w in entry["workers"]]
    if model != "empty_model":
        assert metadata["warmup"]["ran"] is True
        assert len(metadata["labels"]) in (3, 10)


def test_bad_and_good_request_in_one_batch(model_store: Path, tmp_path: Path) -> None:
    """Two requests sent together share a batch: iris registered for this test with one worker,
    batchSize 8 and maxBatchDelay 100 ms on a private server (the shipped spec is tuned for
    throughput, with several workers and a short delay, where two requests may go apart)."""
    with batch_server(ROOT / "config.properties", tmp_path, 1, model_store) as server:
        register(server, "iris", Setting(8, 100, 1))
        before = customized(server, "iris")
        start = threading.Barrier(2)

        def send(body: bytes) -> requests.Response:
            start.wait()
            return predict(server, "iris", data=body, headers={"Content-Type": "application/json"})

        with ThreadPoolExecutor(2) as pool:
            bad = pool.submit(send, b'{"features": [1, 2, "three", 4]}')
            good = pool.submit(send, b'{"features": [6.7, 3.0, 5.2, 2.3]}')
        assert bad.result().status_code == 400
        assert bad.result().json() == {
            "request_id": bad.result().headers["x-request-id"],
            "code": 400,
            "type": "BadRequest",
            "message": "feature 2 (petal_length) is 'three'; expected a finite number >= 0 (cm)",
        }
        assert good.result().status_code == 200
        assert good.result().json()["label"] == "virginica"
        after = customized(server, "iris")
    batches_of_two = int(after["worker"]["batches"].get("2", 0))
    assert batches_of_two == int(before["worker"]["batches"].get("2", 0)) + 1
    assert after["worker"]["errors"] == before["worker"]["errors"] + 1


BAD_INPUTS = [
    ("iris", b"", "application/json", 400),
    ("iris", b"{not json", "application/json", 400),
    ("iris", b"[1, 2]", "application/json", 400),
    ("iris", b"\xff\xfe\x00", "application/octet-stream", 400),
    ("digits", b"GIF89a but not really", "image/gif", 415),
    ("digits", b"", "image/png", 400),
    ("digits", b'{"b64": "%%%"}', "application/json", 400),
]


@pytest.mark.parametrize(("model", "body", "content_type", "status"), BAD_INPUTS)
def test_bad_input_gets_a_clear_4xx_and_no_worker_restart(
    server: TorchServe, model: str, body: bytes, content_type: str, status: int
) -> None:
    pids = [w["pid"] for w in describe(server, model)["workers"]]
    response = predict(server, model, data=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    error = response.json()
    assert error["code"] == status and error["message"]
    assert "Traceback" not in response.text
    assert [w["pid"] for w in describe(server, model)["workers"]] == pids


def test_oversized_body_is_refused_by_the_frontend(server: TorchServe) -> None:
    response = predict(
        server, "digits", data=b"\0" * 7_000_000, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413


def test_unknown_model_is_404(server: TorchServe) -> None:
    assert predict(server, "nope", json=[1]).status_code == 404


def test_handler_metrics_reach_the_prometheus_endpoint(server: TorchServe) -> None:
    """The default config serves metrics for Prometheus: TorchServe's and the handlers'."""
    assert predict(server, "empty_model", data=b"x").status_code == 200
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    assert 'ts_inference_requests_total{model_name="empty_model"' in text
    assert 'servekit_request_seconds_bucket{model_name="empty_model"' in text
    assert 'servekit_responses_total{model_name="empty_model",Level="Model",code="200"' in text
    assert 'ToolkitRequests{ModelName="empty_model"' in text

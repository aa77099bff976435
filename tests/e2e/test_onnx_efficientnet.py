"""EfficientNet-Lite0 on ONNX Runtime (fp32), archived by servekit archive behind the classifier
gate and served by a real TorchServe: the worker opens the archived model (it never exports),
answers as eager fp32 does and shows the gate's figures in its customized metadata."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from sklearn.datasets import load_sample_image

from servekit.config.specs import load_spec, read_yaml
from servekit.runtime.backend_names import GATE_FILE
from servekit.serve import backends
from servekit.serve.harness import LocalModel, Request
from servekit.serve.marinfo import check_against_spec, read_mar
from servekit.serve.server import TorchServe, running
from tests.backend_support import archived, spec_asking
from tests.e2e.conftest import ROOT, customized, wait_ready

pytestmark = pytest.mark.e2e

NAME = "efficientnet-onnx"


def jpeg(name: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(load_sample_image(name)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped efficientnet spec asking for onnxruntime, under another name."""
    return spec_asking("efficientnet", NAME, "onnxruntime", tmp_path_factory.mktemp("specs"))


@pytest.fixture(scope="module")
def store(specs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That spec archived into a store of its own."""
    return archived(specs, NAME, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("torchserve-onnx-effnet")
    with running(ROOT / "config.properties", workdir, model_store=store, models=[NAME]) as ts:
        wait_ready(ts, [NAME])
        yield ts


def test_the_archive_holds_the_onnx_model_and_its_figures(store: Path, specs: Path) -> None:
    with zipfile.ZipFile(store / f"{NAME}.mar") as mar:
        names = set(mar.namelist())
    assert {"model.onnx", GATE_FILE} <= names and "model-int8.onnx" not in names
    assert "efficientnet-lite0.pth" not in names  # the eager weights: read for the gate only
    info = read_mar(store / f"{NAME}.mar")
    spec = load_spec(specs / f"{NAME}.yml", ROOT)
    assert check_against_spec(info, spec, read_yaml(ROOT / "model-config.yml"), ROOT) == []


def test_the_served_backend_answers_as_eager(server: TorchServe, model_store: Path) -> None:
    url = f"{server.inference_url}/predictions/{NAME}"
    photos = [jpeg("china.jpg"), jpeg("flower.jpg")]
    with LocalModel.from_mar(model_store / "efficientnet.mar") as eager:
        expected = [r.json() for r in eager.predict([Request.raw(p, "image/jpeg") for p in photos])]
    for photo, want in zip(photos, expected, strict=True):
        answer = requests.post(url, data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["label"] == want["label"]
        assert [c["class_id"] for c in got["top_k"]] == [c["class_id"] for c in want["top_k"]]
        assert abs(got["top_k"][0]["probability"] - want["top_k"][0]["probability"]) < 1e-3
    bad = requests.post(url, data=b"not an image", timeout=60)
    assert bad.status_code in (400, 415), bad.text


def test_the_customized_metadata_shows_the_backend_and_its_gate(server: TorchServe) -> None:
    shown = customized(server, NAME)
    backend = shown["backend"]
    assert backend["name"] == "onnxruntime" and backend["file"] == "model.onnx"
    assert backend["threads"]["inter_op"] == 1
    assert backend["threads"]["intra_op"] == shown["torch_threads"]
    gate = backend["gate"]
    assert gate["passed"] is True and gate["top1_agreement"] >= backends.TOP1_AGREEMENT
    assert gate["images"] == 300 and gate["top5_overlap"] >= backends.TOP5_OVERLAP
    assert shown["status"] == "ready"

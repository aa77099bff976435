"""MiniLM on ONNX Runtime int8, archived by servekit archive behind the accuracy gate and served
by a real TorchServe: the worker opens the archived model (it never exports), answers close to
eager fp32 and shows the gate's figures in its customized metadata."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from servekit.config.specs import load_spec, read_yaml
from servekit.runtime.backend_names import GATE_FILE
from servekit.serve import backends
from servekit.serve.harness import LocalModel, Request
from servekit.serve.marinfo import check_against_spec, read_mar
from servekit.serve.server import TorchServe, running
from tests.backend_support import archived, spec_asking
from tests.e2e.conftest import ROOT, customized, wait_ready

pytestmark = pytest.mark.e2e

NAME = "minilm-int8"
SENTENCES = ["A man is eating food.", "Hi", "The cat sits outside.", "Le chat est assis dehors."]


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped minilm spec asking for onnxruntime-int8, under another name."""
    return spec_asking("minilm", NAME, "onnxruntime-int8", tmp_path_factory.mktemp("specs"))


@pytest.fixture(scope="module")
def store(specs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That spec archived into a store of its own."""
    return archived(specs, NAME, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("torchserve-onnx")
    with running(ROOT / "config.properties", workdir, model_store=store, models=[NAME]) as ts:
        wait_ready(ts, [NAME])
        yield ts


def test_the_archive_holds_the_quantized_model_and_its_figures(store: Path, specs: Path) -> None:
    with zipfile.ZipFile(store / f"{NAME}.mar") as mar:
        names = set(mar.namelist())
    assert {"model-int8.onnx", GATE_FILE} <= names
    assert "model.onnx" not in names  # only the backend asked for
    assert "model.safetensors" not in names  # the eager weights (87 MB): read for the gate only
    info = read_mar(store / f"{NAME}.mar")
    spec = load_spec(specs / f"{NAME}.yml", ROOT)
    assert check_against_spec(info, spec, read_yaml(ROOT / "model-config.yml"), ROOT) == []


def test_the_served_backend_answers_close_to_eager(server: TorchServe, model_store: Path) -> None:
    url = f"{server.inference_url}/predictions/{NAME}"
    answer = requests.post(url, json=SENTENCES, timeout=60)
    assert answer.status_code == 200, answer.text
    got = torch.tensor(answer.json()["embeddings"])
    with LocalModel.from_mar(model_store / "minilm.mar") as eager:
        reply = eager.predict([Request.json(SENTENCES)])[0]
    expected = torch.tensor(reply.json()["embeddings"])
    cosines = (got * expected).sum(dim=1)
    assert got.shape == (len(SENTENCES), 384)
    assert float(cosines.min()) >= backends.MIN_COSINE, cosines
    bad = requests.post(url, json=["fine", ""], timeout=60)
    assert bad.status_code == 400 and "string 1 is empty" in bad.text


def test_the_customized_metadata_shows_the_backend_and_its_gate(server: TorchServe) -> None:
    shown = customized(server, NAME)
    backend = shown["backend"]
    assert backend["name"] == "onnxruntime-int8" and backend["file"] == "model-int8.onnx"
    assert backend["threads"]["inter_op"] == 1
    assert backend["threads"]["intra_op"] == shown["torch_threads"]
    gate = backend["gate"]
    assert gate["passed"] is True and gate["min_cosine"] >= backends.MIN_COSINE
    assert gate["nearest_neighbour"]["kept"] == gate["nearest_neighbour"]["of"]
    assert shown["status"] == "ready"

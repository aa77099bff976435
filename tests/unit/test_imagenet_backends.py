"""EfficientNet-Lite0's ONNX backends (the classifier gate): the export and static int8 (same
inputs, same bytes), the gate on real photos (fp32 passes; int8 and a perturbed model are
refused with their figures) and the handler on each backend through TorchServe's worker code,
against eager fp32."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from sklearn.datasets import load_sample_image

from handlers.imagenet import ImagenetHandler
from servekit.errors import ArchiveError
from servekit.runtime.backend_names import ONNX_FILES, ONNXRUNTIME, ONNXRUNTIME_INT8
from servekit.serve import backends, gates, onnx_build
from servekit.serve.harness import LocalModel, Request
from tests.backend_support import eager_handler, unpacked
from tests.conftest import ROOT

Built = tuple[Path, list[backends.Figures]]


def jpeg(name: str, flip: bool = False) -> Request:
    image = Image.fromarray(load_sample_image(name))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return Request.raw(out.getvalue(), "image/jpeg")


PHOTOS = [jpeg("china.jpg"), jpeg("flower.jpg"), jpeg("china.jpg", flip=True)]


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImagenetHandler]:
    """The eager handler on the staged archive files, as servekit archive loads it."""
    with eager_handler("efficientnet", tmp_path_factory.mktemp("effnet")) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def gate(handler: ImagenetHandler) -> gates.Gate:
    return gates.ClassifierGate(handler)


@pytest.fixture(scope="module")
def built(
    handler: ImagenetHandler, gate: gates.Gate, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    """Both backends built once (one export), with their figures."""
    out = tmp_path_factory.mktemp("backends")
    return out, onnx_build.build_all([ONNXRUNTIME, ONNXRUNTIME_INT8], handler, out, gate)


def figures(built: Built, backend: str) -> backends.ClassifierFigures:
    found = next(f for f in built[1] if f.backend == backend)
    assert isinstance(found, backends.ClassifierFigures)
    return found


# ----- the gate --------------------------------------------------------------------------------
def test_fp32_passes_the_gate_and_static_int8_is_refused_with_its_figures(built: Built) -> None:
    fp32, int8 = figures(built, ONNXRUNTIME), figures(built, ONNXRUNTIME_INT8)
    assert fp32.passed and fp32.top1_agreement == 1.0 and fp32.top5_overlap >= 0.99, fp32
    assert fp32.images == 300 and fp32.photos == 3
    assert not int8.passed and int8.top1_agreement < backends.TOP1_AGREEMENT, int8
    assert f"top-1 agreement {int8.top1_agreement:.2%} (>= 99%)" in int8.summary()
    recorded = int8.as_dict()
    assert recorded["passed"] is False and recorded["thresholds"]["top1_agreement"] == 0.99


def test_a_perturbed_model_fails_the_gate_naming_its_figures(
    built: Built, gate: gates.Gate, tmp_path: Path
) -> None:
    model = onnx.load(str(built[0] / ONNX_FILES[ONNXRUNTIME]))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.name == "_fc.weight":
            weights = numpy_helper.to_array(init)
            noisy = weights + rng.normal(0, 0.05, weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    measured = gate.measure(ONNXRUNTIME, broken)
    assert isinstance(measured, backends.ClassifierFigures)
    assert not measured.passed and measured.top1_agreement < 0.99, measured
    assert f"top-5 overlap {measured.top5_overlap:.4f}" in measured.summary()


def test_the_heldout_set_names_each_photo_its_source_and_licence() -> None:
    data = gates.read_heldout("classifier")
    for photo in [*data["photos"], *data["calibration"]]:
        assert photo["license"] and photo["variants"] >= 1
    held = {p["file"] for p in data["photos"]}
    calibration = {Path(p["file"]).name for p in data["calibration"]}
    assert not held & calibration  # static int8 is calibrated on other photos
    for photo in data["photos"]:
        assert gates.open_photo(photo).size[0] >= 400  # installed, and the sha256 matches


def test_a_photo_that_is_not_the_recorded_one_is_refused() -> None:
    photo = {**gates.read_heldout("classifier")["photos"][0], "sha256": "0" * 64}
    refused = r"china\.jpg is missing from scikit-learn or .*sha256 differs"
    with pytest.raises(ArchiveError, match=refused):
        gates.open_photo(photo)


# ----- reproducible ----------------------------------------------------------------------------
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_inputs_give_the_same_onnx_bytes(
    built: Built, handler: ImagenetHandler, tmp_path: Path
) -> None:
    with gates.one_thread():
        modules = onnx_build.export(handler, tmp_path / "model.onnx")
        onnx_build.quantize_int8(
            handler, tmp_path / "model.onnx", tmp_path / "model-int8.onnx", modules
        )
    for name in ONNX_FILES.values():
        assert sha(tmp_path / name) == sha(built[0] / name), name
        data = (tmp_path / name).read_bytes()
        assert str(ROOT).encode() not in data and b"site-packages" not in data, name


# ----- the handler on each backend -------------------------------------------------------------
@pytest.fixture(scope="module")
def eager(model_store: Path) -> Iterator[list[dict[str, Any]]]:
    with LocalModel.from_mar(model_store / "efficientnet.mar") as model:
        yield [reply.json() for reply in model.predict(PHOTOS)]


@pytest.mark.parametrize("backend", [ONNXRUNTIME, ONNXRUNTIME_INT8])
def test_the_handler_answers_on_each_backend(
    backend: str,
    eager: list[dict[str, Any]],
    built: Built,
    model_store: Path,
    tmp_path: Path,
) -> None:
    mar, recorded = model_store / "efficientnet.mar", figures(built, backend).as_dict()
    model_dir = unpacked(mar, tmp_path / "model", backend, built[0], recorded)
    with LocalModel(model_dir, batch_size=8) as model:
        replies = model.predict([*PHOTOS, Request.raw(b"not an image", "image/jpeg")])
        described = model.describe()
    assert [r.status for r in replies] == [200, 200, 200, 415]
    got = [r.json() for r in replies[:3]]
    assert all(len(answer["top_k"]) == 5 for answer in got)
    if backend == ONNXRUNTIME:  # the gated backend: the same classes, the same probabilities
        assert [a["label"] for a in got] == [e["label"] for e in eager]
        for a, e in zip(got, eager, strict=True):
            assert a["top_k"][0]["probability"] == pytest.approx(
                e["top_k"][0]["probability"], abs=1e-4
            )
    shown = described["backend"]
    assert shown["name"] == backend and shown["file"] == ONNX_FILES[backend]
    assert shown["threads"] == {"intra_op": torch.get_num_threads(), "inter_op": 1}
    assert shown["gate"]["passed"] is (backend == ONNXRUNTIME)
    assert shown["gate"]["top1_agreement"] == figures(built, backend).top1_agreement

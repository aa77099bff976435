"""MiniLM's ONNX backends (the embedding gate): the export and quantization (same inputs, same
bytes), the accuracy gate (a broken backend is refused with its figures) and the
handler on each backend through TorchServe's worker code, against eager fp32."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper

from servekit.config.specs import effective_config, load_spec
from servekit.errors import ConfigError
from servekit.runtime.backend_names import ONNX_FILES, ONNXRUNTIME, ONNXRUNTIME_INT8
from servekit.runtime.text import TextEmbeddingHandler
from servekit.serve import archive, backends, gates, onnx_build
from servekit.serve.gate import main as gate_main
from servekit.serve.harness import LocalModel, Request
from tests.backend_support import eager_handler, unpacked
from tests.conftest import ROOT

Built = tuple[Path, list[backends.Figures]]
SENTENCES = [
    "A man is eating food.",
    "Hi",
    "The new movie is awesome.",
    "A cheetah is running behind its prey, across the dry grass of the savanna at noon.",
    "Le chat est assis dehors.",
]


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextEmbeddingHandler]:
    """MiniLM's eager handler on the staged archive files, as servekit archive loads it."""
    with eager_handler("minilm", tmp_path_factory.mktemp("minilm")) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def gate(handler: TextEmbeddingHandler) -> gates.Gate:
    """The embedding gate, its eager vectors measured once."""
    return gates.EmbeddingGate(handler)


@pytest.fixture(scope="module")
def built(
    handler: TextEmbeddingHandler, gate: gates.Gate, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    """Both backends built once (one export), with their figures."""
    out = tmp_path_factory.mktemp("backends")
    return out, onnx_build.build_all([ONNXRUNTIME, ONNXRUNTIME_INT8], handler, out, gate)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- the gate --------------------------------------------------------------------------------
def test_both_backends_pass_the_gate_with_their_figures(built: Built) -> None:
    fp32, int8 = built[1]
    assert isinstance(fp32, backends.EmbeddingFigures)
    assert isinstance(int8, backends.EmbeddingFigures)
    assert fp32.passed and fp32.mean_cosine >= 0.9999, fp32
    assert int8.passed and int8.min_cosine >= backends.MIN_COSINE, int8
    assert int8.mean_cosine < fp32.mean_cosine  # int8 is measured, not copied from fp32
    assert int8.neighbours_kept == int8.neighbours == 60
    assert int8.sentences == 298
    assert len(int8.kept_fp32) == 10 and "encoder.layer.0.output.dense" in int8.kept_fp32
    assert fp32.kept_fp32 == ()


def test_int8_is_gated_alone_and_in_the_handlers_length_groups(
    built: Built, gate: gates.Gate
) -> None:
    """Dynamic int8's activation scales are per tensor: a vector depends on its batch-mates.
    The recorded figures are the worst of each sentence alone and all of them in one call (the
    handler's length groups of 8, as a full served batch), so neither way hides the other."""
    out, (_, int8) = built
    assert isinstance(int8, backends.EmbeddingFigures)
    assert int8.batching == "the worst of each sentence alone and in groups of 8"
    path = out / ONNX_FILES[ONNXRUNTIME_INT8]
    alone, grouped = (
        gate.compare(ONNXRUNTIME_INT8, _int8_rows(gate, path, batch), gate.expected_in[batch], ())
        for batch in gates.EmbeddingGate.batchings
    )
    assert isinstance(alone, backends.EmbeddingFigures)
    assert isinstance(grouped, backends.EmbeddingFigures)
    assert alone.min_cosine != grouped.min_cosine  # the batching does change int8's vectors
    assert int8.min_cosine == min(alone.min_cosine, grouped.min_cosine)


def _int8_rows(gate: gates.Gate, path: Path, batch: int) -> torch.Tensor:
    with gates.running(gate.handler, path), gates.one_thread():
        return gates.outputs(gate.handler, gate.items, batch)


def test_a_perturbed_model_fails_the_gate_naming_its_figures(
    built: Built, gate: gates.Gate, tmp_path: Path
) -> None:
    model = onnx.load(str(built[0] / ONNX_FILES[ONNXRUNTIME]))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.ndim == 2 and weights.shape[0] == 384:
            noisy = weights + rng.normal(0, 0.02, weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    figures = gate.measure(ONNXRUNTIME, broken)
    assert isinstance(figures, backends.EmbeddingFigures)
    assert not figures.passed
    assert figures.min_cosine < backends.MIN_COSINE
    assert f"lowest {figures.min_cosine:.4f} (>= 0.98)" in figures.summary()


def test_int8_with_every_layer_quantized_is_refused_by_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All 36 linear layers in int8: the lowest cosine falls under 0.98, nothing is archived."""
    monkeypatch.setattr(TextEmbeddingHandler, "int8_keep_fp32", ())
    specs = tmp_path / "config"
    specs.mkdir()
    spec = yaml.safe_load((ROOT / "config" / "minilm.yml").read_text())
    spec["name"] = "minilm-allint8"
    spec["handler_options"]["backend"] = "onnxruntime-int8"
    (specs / "minilm-allint8.yml").write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    argv = ["--project", str(ROOT), "--config-dir", str(specs), "--store", str(store)]
    assert archive.main(argv) == 1
    err = capsys.readouterr().err
    assert "backend onnxruntime-int8 of 'minilm-allint8' fails the accuracy gate" in err
    assert "lowest 0.9" in err and "not archived" in err
    assert not (store / "minilm-allint8.mar").exists()


def test_a_handler_that_offers_no_backend_is_bad_input(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "config" / "iris.yml", ROOT)
    config = {**effective_config(spec, {}), "handler": {"backend": "onnxruntime"}}
    staged = archive.stage_files(spec, ROOT, tmp_path / "stage")
    with pytest.raises(ConfigError, match="IrisHandler does not subclass OnnxBackendHandler"):
        backends.stage(spec, config, staged)


# ----- reproducible ----------------------------------------------------------------------------
def test_the_same_inputs_give_the_same_onnx_bytes(
    built: Built, handler: TextEmbeddingHandler, gate: gates.Gate, tmp_path: Path
) -> None:
    again = onnx_build.build_all([ONNXRUNTIME, ONNXRUNTIME_INT8], handler, tmp_path, gate)
    for name in ONNX_FILES.values():
        assert sha(tmp_path / name) == sha(built[0] / name), name
    assert again == built[1]


def test_the_export_holds_no_machine_path(built: Built) -> None:
    for name in ONNX_FILES.values():
        data = (built[0] / name).read_bytes()
        assert str(ROOT).encode() not in data and b"site-packages" not in data, name


# ----- the handler on each backend -------------------------------------------------------------
@pytest.fixture(scope="module")
def eager(model_store: Path) -> Iterator[list[list[float]]]:
    with LocalModel.from_mar(model_store / "minilm.mar") as model:
        yield model.predict([Request.json(SENTENCES)])[0].json()["embeddings"]


@pytest.mark.parametrize("backend", [ONNXRUNTIME, ONNXRUNTIME_INT8])
def test_the_handler_answers_like_eager_on_each_backend(
    backend: str,
    eager: list[list[float]],
    built: Built,
    model_store: Path,
    tmp_path: Path,
) -> None:
    figures = next(f for f in built[1] if f.backend == backend)
    model_dir = unpacked(
        model_store / "minilm.mar", tmp_path / "model", backend, built[0], figures.as_dict()
    )
    assert isinstance(figures, backends.EmbeddingFigures)
    with LocalModel(model_dir) as model:
        replies = model.predict(
            [Request.json(SENTENCES), Request.json("Hi"), Request.json(["x", ""])]
        )
        described = model.describe()
    assert [r.status for r in replies] == [200, 200, 400]
    got = np.array(replies[0].json()["embeddings"])
    assert got.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * np.array(eager)).sum(axis=1)
    assert cosines.min() >= (0.9999 if backend == ONNXRUNTIME else 0.98), cosines
    assert np.allclose(replies[1].json()["embedding"], got[1], atol=1e-5)
    shown = described["backend"]
    assert shown["name"] == backend and shown["file"] == ONNX_FILES[backend]
    assert shown["threads"] == {"intra_op": torch.get_num_threads(), "inter_op": 1}
    assert shown["gate"]["passed"] is True
    assert shown["gate"]["min_cosine"] == figures.min_cosine


# ----- the held-out set ------------------------------------------------------------------------
def test_the_heldout_set_is_varied_and_its_pairs_are_each_others_neighbours(
    gate: gates.Gate,
) -> None:
    """With eager fp32, each retrieval sentence's nearest neighbour is its paraphrase partner:
    the set asks a backend to keep answers eager gets right, not to break near ties."""
    heldout = gate
    assert isinstance(heldout, gates.EmbeddingGate)
    sentences, retrieval = heldout.sentences, heldout.retrieval
    assert len(sentences) >= 200 and len(set(sentences)) == len(sentences)
    assert len(retrieval) % 2 == 0 and not set(retrieval) & set(sentences)
    embeddings = heldout.expected[len(sentences) :]
    partners = [i + 1 if i % 2 == 0 else i - 1 for i in range(len(retrieval))]
    assert gates.nearest(embeddings).tolist() == partners


# ----- servekit gate ---------------------------------------------------------------------------
def test_gate_of_an_unknown_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        gate_main(["--project", str(ROOT), "nosuch"])
    assert exited.value.code == 2
    assert "no spec 'nosuch'" in capsys.readouterr().err


def test_gate_of_a_model_whose_handler_offers_no_backend_is_bad_input(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gate_main(["--project", str(ROOT), "iris"]) == 2
    assert "IrisHandler does not subclass OnnxBackendHandler" in capsys.readouterr().err

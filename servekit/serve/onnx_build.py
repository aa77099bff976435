"""Export, quantize and measure the ``text-embedding`` kind's ONNX backends against eager fp32
(``servekit.serve.backends`` decides when; this module does it, with torch, onnx and ONNX
Runtime)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from servekit.errors import ArchiveError
from servekit.runtime.backend_names import (
    EXTRA,
    GATE_FILE,
    ONNX_FILES,
    ONNXRUNTIME,
    ONNXRUNTIME_INT8,
)
from servekit.runtime.backends import INPUTS, OUTPUT, OnnxEncoder
from servekit.runtime.text import mean_pool
from servekit.serve.backends import GateFigures, Heldout

BATCH = 16
OPSET = 18
KEEP_FP32 = (r"encoder\.layer\.\d+\.output\.dense", r"encoder\.layer\.[2-5]\.intermediate\.dense")
"""Linear layers ``onnxruntime-int8`` leaves in fp32 (module paths, as regular expressions): every
feed-forward down-projection and the up-projections of layers 2-5, the layers whose int8
versions cost the most, quantized one at a time. On MiniLM's held-out set: all in int8, lowest
cosine 0.939; down-projections kept, 0.962; these 10 of 36 kept, 0.984 (mean 0.9975); the whole
feed-forward kept (12), 0.987, but then only the attention projections are int8."""


class Reference:
    """Eager torch fp32 on the spec's Hugging Face files: the model every backend must match."""

    def __init__(self, model_dir: Path, pooling: str = "mean") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import transformers
        except ModuleNotFoundError as err:
            raise ArchiveError(f"backends need the package {err.name}") from None
        where = str(model_dir)
        with _quiet():  # a progress bar per load
            auto = transformers.AutoTokenizer, transformers.AutoModel
            self.tokenizer = auto[0].from_pretrained(where, local_files_only=True)
            self.model = auto[1].from_pretrained(where, local_files_only=True).eval()
        self.pooling = pooling

    def embed(self, sentences: Sequence[str], encoder: Any = None) -> torch.Tensor:
        """L2-normalized embeddings of ``sentences`` by ``encoder`` (default: eager)."""
        run = encoder or self.model
        rows = []
        with torch.inference_mode():
            for start in range(0, len(sentences), BATCH):
                batch = self.tokenizer(
                    list(sentences[start : start + BATCH]), padding=True, return_tensors="pt"
                )
                out = run(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                hidden = out[OUTPUT]
                mask = batch["attention_mask"]
                rows.append(hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, mask))
        return torch.nn.functional.normalize(torch.cat(rows).float(), p=2.0, dim=1)


class _Wrapped(torch.nn.Module):
    """The encoder with the two inputs the backends feed and one output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return out


def export_fp32(reference: Reference, out: Path) -> dict[str, str]:
    """Export the encoder with torch's ONNX exporter (dynamic batch and length) to ``out``;
    the module path of each MatMul node, by node name."""
    onnx = _need("onnx")
    sample = reference.tokenizer(["a short one", "and a longer sentence"], padding=True)
    args = tuple(torch.tensor(sample[name]) for name in INPUTS)
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length")
    with _quiet():
        program = torch.onnx.export(
            _Wrapped(reference.model).eval(),
            args,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={name: {0: batch, 1: length} for name in INPUTS},
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            external_data=False,
        )
    if program is None:
        raise ArchiveError("torch's ONNX exporter gave no program")
    model = program.model_proto
    modules = _strip_metadata(model)
    onnx.save(model, str(out))
    return modules


def _strip_metadata(model: Any) -> dict[str, str]:
    """Drop the exporter's per-node metadata (stack traces hold the building machine's paths:
    the same inputs would give other bytes elsewhere); keep each MatMul's module path."""
    modules = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if node.op_type == "MatMul" and prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)
                if len(scopes) >= 2 and scopes[-1].startswith("linear"):
                    modules[node.name] = scopes[-2].removeprefix("model.")
        del node.metadata_props[:]
    return modules


def quantize_int8(fp32: Path, out: Path, modules: Mapping[str, str]) -> tuple[str, ...]:
    """Dynamic int8 with per-channel weight scales, the layers ``KEEP_FP32`` names left in
    fp32; the module paths of those layers."""
    quantization = _need("onnxruntime.quantization")
    kept = {
        node: module
        for node, module in modules.items()
        if any(re.fullmatch(pattern, module) for pattern in KEEP_FP32)
    }
    with _quiet():
        quantization.quantize_dynamic(
            str(fp32),
            str(out),
            per_channel=True,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=sorted(kept),
        )
    return tuple(sorted(kept.values(), key=_natural))


def measure(backend: str, reference: Reference, path: Path, heldout: Heldout) -> GateFigures:
    """How closely the backend in ``path`` matches eager fp32 on ``heldout``."""
    encoder = OnnxEncoder(path, threads=1)  # one thread: figures that do not move with cores
    cosines = reference.embed(heldout.sentences) * reference.embed(heldout.sentences, encoder)
    expected = reference.embed(heldout.retrieval)
    got = reference.embed(heldout.retrieval, encoder)
    every = torch.cat([cosines.sum(dim=1), (expected * got).sum(dim=1)])
    kept = int((_nearest(expected) == _nearest(got)).sum())
    return GateFigures(
        backend,
        mean_cosine=round(float(every.mean()), 5),
        min_cosine=round(float(every.min()), 5),
        neighbours_kept=kept,
        neighbours=len(heldout.retrieval),
        sentences=len(heldout.sentences) + len(heldout.retrieval),
    )


def _nearest(embeddings: torch.Tensor) -> torch.Tensor:
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=1)


def build(backend: str, model_dir: Path, out_dir: Path, pooling: str = "mean") -> GateFigures:
    """Export (and quantize) ``backend`` into ``out_dir`` and measure it; ``out_dir`` then
    holds its ONNX file and ``backend-gate.json`` (whether it passed or not)."""
    figures = build_all([backend], model_dir, out_dir, pooling)[0]
    return figures


def build_all(
    backends: Sequence[str], model_dir: Path, out_dir: Path, pooling: str = "mean"
) -> list[GateFigures]:
    """Each of ``backends`` (one export shared) built in ``out_dir``, with its figures."""
    reference = Reference(model_dir, pooling)
    heldout = Heldout.read()
    with _one_thread():
        fp32 = out_dir / ONNX_FILES[ONNXRUNTIME]
        modules = export_fp32(reference, fp32)
        results = []
        for backend in backends:
            path, kept = fp32, tuple[str, ...]()
            if backend == ONNXRUNTIME_INT8:
                path = out_dir / ONNX_FILES[ONNXRUNTIME_INT8]
                kept = quantize_int8(fp32, path, modules)
            figures = dataclasses.replace(
                measure(backend, reference, path, heldout), kept_fp32=kept
            )
            results.append(figures)
    if ONNXRUNTIME not in backends:
        fp32.unlink()
    if len(results) == 1:
        text = json.dumps(results[0].as_dict(), indent=2, sort_keys=True) + "\n"
        (out_dir / GATE_FILE).write_text(text, encoding="utf-8")
    return results


def _need(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ModuleNotFoundError as err:
        raise ArchiveError(
            f"the ONNX backends need the package {err.name} (pip install 'torchserve-kit[{EXTRA}]')"
        ) from None


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while measuring: the same figures on any machine size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantizer print progress and advice to stdout and stderr."""
    sink = io.StringIO()
    loggers = [logging.root, logging.getLogger("torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

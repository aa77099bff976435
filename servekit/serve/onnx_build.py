"""Export, quantize and gate a handler's ONNX backends against its eager fp32 model
(``servekit.serve.backends`` decides when; this module does it, with torch, onnx and ONNX
Runtime; ``servekit.serve.gates`` measures)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from servekit.errors import ArchiveError
from servekit.runtime.backend_names import (
    EXTRA,
    GATE_FILE,
    ONNX_FILES,
    ONNXRUNTIME,
    ONNXRUNTIME_INT8,
    STATIC,
)
from servekit.runtime.backends import OnnxBackendHandler
from servekit.serve.backends import Figures
from servekit.serve.gates import GATES, Gate, one_thread

OPSET = 18
WEIGHTED = ("MatMul", "Gemm", "Conv")
"""The nodes int8 quantizes, whose module paths ``int8_keep_fp32`` can name."""


def export(handler: OnnxBackendHandler[Any], out: Path) -> dict[str, str]:
    """Export the handler's eager module with torch's ONNX exporter (the dimensions the handler
    declares dynamic) to ``out``; the module path of each weighted node, by node name."""
    onnx = _need("onnx")
    sample = handler.export_sample()
    dims = {d: torch.export.Dim(f"dim{d}", min=1, max=4096) for d in handler.onnx_dynamic_dims}
    with _quiet():
        program = torch.onnx.export(
            handler.export_module().eval(),
            sample,
            input_names=list(handler.onnx_inputs),
            output_names=list(handler.onnx_outputs),
            dynamic_shapes=tuple(dict(dims) for _ in sample),
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
    """Drop the exporter's metadata (stack traces hold the building machine's paths: the same
    inputs would give other bytes elsewhere) and its shape annotations (the quantizer infers
    them again; the exporter's can disagree with what inference finds); keep each weighted
    node's module path."""
    modules = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if node.op_type in WEIGHTED and prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)
                if len(scopes) >= 2:
                    modules[node.name] = scopes[-2].removeprefix("model.")
        del node.metadata_props[:]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        del value.metadata_props[:]
    del model.graph.value_info[:]
    del model.metadata_props[:]
    return modules


def quantize_int8(
    handler: OnnxBackendHandler[Any], fp32: Path, out: Path, modules: Mapping[str, str]
) -> tuple[str, ...]:
    """int8 with per-channel weight scales, as the handler declares (dynamic, or static QDQ
    calibrated on the gate's calibration photos), the layers ``int8_keep_fp32`` names left in
    fp32; the module paths of those layers."""
    quantization = _need("onnxruntime.quantization")
    kept = {
        node: module
        for node, module in modules.items()
        if any(re.fullmatch(pattern, module) for pattern in handler.int8_keep_fp32)
    }
    with _quiet():
        if handler.int8 == STATIC:
            quantization.quantize_static(
                str(fp32),
                str(out),
                _Calibration(handler.onnx_inputs[0], GATES[handler.gate].calibration(handler)),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                nodes_to_exclude=sorted(kept),
            )
        else:
            quantization.quantize_dynamic(
                str(fp32),
                str(out),
                per_channel=True,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=sorted(kept),
            )
    return tuple(sorted(set(kept.values()), key=_natural))


class _Calibration:
    """ONNX Runtime's calibration reader over batches of the model's one input."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self.feeds = iter([{name: batch} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def build_all(
    backends: Sequence[str],
    handler: OnnxBackendHandler[Any],
    out_dir: Path,
    gate: Gate | None = None,
) -> list[Figures]:
    """Each of ``backends`` (one export shared) built in ``out_dir`` from the eager ``handler``,
    with its figures (by ``gate``, default the handler's, measured anew); one backend also gets
    ``backend-gate.json`` (whether it passed or not)."""
    with one_thread():
        gate = gate or GATES[handler.gate](handler)
        fp32 = out_dir / ONNX_FILES[ONNXRUNTIME]
        modules = export(handler, fp32)
        results = []
        for backend in backends:
            path, kept = fp32, tuple[str, ...]()
            if backend == ONNXRUNTIME_INT8:
                path = out_dir / ONNX_FILES[ONNXRUNTIME_INT8]
                kept = quantize_int8(handler, fp32, path, modules)
            results.append(gate.measure(backend, path, kept))
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

"""Backends of the ``text-embedding`` kind: eager torch (the reference), or ONNX Runtime on a
model ``servekit archive`` exported (fp32) or quantized (dynamic int8) and put in the archive.

The worker never exports: it opens ``model.onnx`` or ``model-int8.onnx`` from the archive,
with ONNX Runtime's intra-op threads set as torch's (``torch_threads``, else torch's default)
and one inter-op thread, so a worker uses as many cores as it would with torch.
``backend-gate.json`` beside it holds the accuracy figures the archive was built with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from servekit.runtime.backend_names import EXTRA, GATE_FILE, ONNX_FILES
from servekit.runtime.errors import ModelLoadError

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"


class OnnxEncoder:
    """An exported encoder run by ONNX Runtime, called as the Hugging Face model is:
    ``encoder(input_ids=..., attention_mask=...)`` gives ``{"last_hidden_state": tensor}``."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime
        except ModuleNotFoundError as err:
            raise ModelLoadError(
                f"backend {path.name}: needs the package {err.name} "
                f"(pip install 'torchserve-kit[{EXTRA}]')"
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ONNX Runtime raises its own types for a broken file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(
                f"'{path.name}' does not load in ONNX Runtime: {first[:300]}"
            ) from None
        self.threads = {"intra_op": threads, "inter_op": 1}
        self.version = str(onnxruntime.__version__)
        self.file = path.name

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        feed = {
            "input_ids": np.ascontiguousarray(input_ids.cpu().numpy(), dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask.cpu().numpy(), dtype=np.int64),
        }
        (hidden,) = self.session.run([OUTPUT], feed)
        return {OUTPUT: torch.from_numpy(hidden)}


def open_backend(backend: str, model_dir: Path, model_name: str) -> OnnxEncoder:
    """The archive's ONNX model for ``backend``, with torch's thread count."""
    path = model_dir / ONNX_FILES[backend]
    if not path.is_file():
        raise ModelLoadError(
            f"model '{model_name}': handler option 'backend' is {backend!r} but the archive "
            f"holds no {path.name}: rebuild it with servekit archive (it exports the model)"
        )
    return OnnxEncoder(path, torch.get_num_threads())


def gate_figures(model_dir: Path) -> dict[str, Any] | None:
    """The accuracy figures recorded in the archive (``None`` when it has none)."""
    path = model_dir / GATE_FILE
    if not path.is_file():
        return None
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"error": f"{GATE_FILE} is not JSON"}
    return figures if isinstance(figures, dict) else {"error": f"{GATE_FILE} is not an object"}

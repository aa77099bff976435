"""ONNX backends for any toolkit handler: eager torch (the reference), or ONNX Runtime on a model
``servekit archive`` exported (fp32) or quantized (int8) and put in the archive.

A handler offers them by subclassing ``OnnxBackendHandler`` (with options that subclass
``BackendOptions``) and declaring how it exports and which accuracy gate applies::

    class ImagenetHandler(OnnxBackendHandler[np.ndarray]):
        options_class = ImagenetOptions        # a BackendOptions: the option 'backend'
        gate = CLASSIFIER                      # top-1 agreement and top-5 overlap on photos
        int8 = STATIC                          # static QDQ int8, calibrated on other photos

The worker never exports: it opens ``model.onnx`` or ``model-int8.onnx`` from the archive,
with ONNX Runtime's intra-op threads set as torch's (``torch_threads``, else torch's default)
and one inter-op thread, so a worker uses as many cores as it would with torch.
``backend-gate.json`` beside it holds the accuracy figures the archive was built with.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from servekit.runtime.backend_names import (
    BACKENDS,
    CLASSIFIER,
    DYNAMIC,
    EAGER,
    EXTRA,
    GATE_FILE,
    ONNX_FILES,
)
from servekit.runtime.base import ItemT, ToolkitHandler
from servekit.runtime.devices import CPU
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions


@dataclasses.dataclass(frozen=True)
class BackendOptions(HandlerOptions):
    backend: str = EAGER
    """'eager' (torch, fp32), 'onnxruntime' (fp32) or 'onnxruntime-int8': the ONNX ones are
    built by servekit archive, which refuses one that fails the accuracy gate (servekit gate
    NAME shows the figures); threads as torch's (torch_threads)."""

    def check(self) -> None:
        super().check()
        if self.backend not in BACKENDS:
            raise ModelLoadError(
                f"handler option 'backend' is {self.backend!r}; allowed: {', '.join(BACKENDS)}"
            )


class OnnxModel:
    """An exported model run by ONNX Runtime, called as the torch module was: tensors by
    position or by input name; one output gives a tensor, several a dict by name."""

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
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.threads = {"intra_op": threads, "inter_op": 1}
        self.version = str(onnxruntime.__version__)
        self.file = path.name

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        given = dict(zip(self.inputs, args, strict=False)) | kwargs
        feed = {name: np.ascontiguousarray(given[name].cpu().numpy()) for name in self.inputs}
        found = self.session.run(self.outputs, feed)
        if len(found) == 1:
            return torch.from_numpy(found[0])
        return {
            name: torch.from_numpy(value) for name, value in zip(self.outputs, found, strict=True)
        }


class OnnxBackendHandler(ToolkitHandler[ItemT]):
    """A handler whose model ``servekit archive`` can export to ONNX behind an accuracy gate.

    It builds its torch model in ``load_eager_model`` (``load_model`` picks eager or ONNX).
    The kind declares the gate (``CLASSIFIER``: top-1 agreement and top-5 overlap of the
    logits on real photos; ``EMBEDDING``: cosine and nearest neighbours of the vectors on
    sentences), how int8 is made (``DYNAMIC`` or ``STATIC``, calibrated) and, when the
    defaults do not fit, what to export: ``export_module`` (default: the eager model) called
    on ``export_sample`` (default: the collated warm-up batch) with ``onnx_inputs`` whose
    ``onnx_dynamic_dims`` vary (default: the batch dimension).
    """

    options: BackendOptions
    gate: ClassVar[str] = CLASSIFIER
    int8: ClassVar[str] = DYNAMIC
    int8_keep_fp32: ClassVar[tuple[str, ...]] = ()
    """Layers (module paths, as regular expressions) int8 leaves in fp32."""
    onnx_inputs: ClassVar[tuple[str, ...]] = ("input",)
    onnx_outputs: ClassVar[tuple[str, ...]] = ("output",)
    onnx_dynamic_dims: ClassVar[tuple[int, ...]] = (0,)
    """The dimensions of every input that vary: 0, the batch (1, a sequence's length)."""

    def load_model(self) -> Any:
        """The eager model (``load_eager_model``) or the archive's ONNX one, as ``backend`` says."""
        backend = self.options.backend
        if backend == EAGER:
            return self.load_eager_model()
        self.prepare_backend()
        if self.device != CPU:  # the backends run ONNX Runtime's CPU provider
            self.device, self.device_reason = CPU, f"cpu (backend {backend} runs on the CPU)"
        path = self.model_dir / ONNX_FILES[backend]
        if not path.is_file():
            raise ModelLoadError(
                f"model '{self.model_name}': handler option 'backend' is {backend!r} but the "
                f"archive holds no {path.name}: rebuild it with servekit archive (it exports "
                "the model)"
            )
        return OnnxModel(path, torch.get_num_threads())

    def load_eager_model(self) -> Any:
        """Build the torch model (what ``load_model`` does in other handlers: a handler that
        offers backends overrides this one instead)."""
        return super().load_model()

    def prepare_backend(self) -> None:
        """Load what the kind needs besides the model (a tokenizer) when a backend runs it."""

    def export_module(self) -> torch.nn.Module:
        """The eager module to export (called on the eager handler, at archive time)."""
        if not isinstance(self.model, torch.nn.Module):
            raise ModelLoadError(f"model '{self.model_name}': the eager model is no torch module")
        return self.model

    def export_sample(self) -> tuple[torch.Tensor, ...]:
        """Inputs of ``export_module`` for the exporter to trace: two warm-up items."""
        return (self.preprocess(self.warmup_items(2)),)

    def describe_handle(self) -> dict[str, Any]:
        described = super().describe_handle()
        backend: dict[str, Any] = {"name": self.options.backend}
        if isinstance(self.model, OnnxModel):
            backend |= {
                "file": self.model.file,
                "onnxruntime": self.model.version,
                "threads": self.model.threads,
                "gate": gate_figures(self.model_dir),
            }
        described["backend"] = backend
        return described


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

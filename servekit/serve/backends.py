"""ONNX backends of any handler that offers them (``servekit.runtime.backends``), built at archive
time behind an accuracy gate.

A spec asks for one with ``handler_options: {backend: onnxruntime}`` (fp32) or
``onnxruntime-int8``. ``servekit archive`` then loads the handler in-process on the staged
files (eager, as a worker would), exports its model with torch's ONNX exporter, quantizes it
the way the handler declares, and compares it with eager torch fp32 on the held-out set of the
handler's gate: ``embedding`` (mean cosine >= 0.99, lowest >= 0.98, every retrieval sentence
keeps its nearest neighbour) or ``classifier`` (top-1 agreement >= 99 % and top-5 overlap
>= 0.95 on real photos, crops and flips). A backend that fails is not archived (exit 1, its
figures named); one that passes goes in the .mar with its figures (``backend-gate.json``).
``servekit gate NAME`` shows the figures without archiving (``servekit.serve.gate``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import yaml

from servekit.config.specs import ModelSpec
from servekit.errors import ArchiveError, ConfigError
from servekit.runtime.backend_names import (
    BACKENDS,
    CLASSIFIER,
    EAGER,
    EMBEDDING,
    EXTRA,
    GATE_FILE,
    ONNX_FILES,
)
from servekit.serve.harness import LocalModel, ModelLoadFailed

HELDOUT_DIR = Path(__file__).parent / "heldout"
HELDOUT_FILES = {
    EMBEDDING: HELDOUT_DIR / "text_embedding.json",
    CLASSIFIER: HELDOUT_DIR / "image_classifier.json",
}
MEAN_COSINE = 0.99
MIN_COSINE = 0.98
TOP1_AGREEMENT = 0.99
TOP5_OVERLAP = 0.95
TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "pillow")
"""The packages whose versions decide the exported bytes (and so the archive's digest)."""
CODE = ("backends.py", "onnx_build.py", "gates.py")
"""The modules (here) that build and gate a backend: the digest covers them."""


class GateRefused(ArchiveError):
    """A backend that does not match eager fp32 closely enough: it is not archived."""


class Figures(Protocol):
    """What a gate measured of one backend."""

    @property
    def backend(self) -> str: ...

    @property
    def kept_fp32(self) -> tuple[str, ...]: ...

    @property
    def passed(self) -> bool: ...

    def summary(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class EmbeddingFigures:
    backend: str
    mean_cosine: float
    min_cosine: float
    neighbours_kept: int
    neighbours: int
    sentences: int
    kept_fp32: tuple[str, ...] = ()
    batching: str = "each sentence alone"

    @property
    def passed(self) -> bool:
        return (
            self.mean_cosine >= MEAN_COSINE
            and self.min_cosine >= MIN_COSINE
            and self.neighbours_kept == self.neighbours
        )

    def summary(self) -> str:
        return (
            f"mean cosine {self.mean_cosine:.4f} (>= {MEAN_COSINE}), lowest {self.min_cosine:.4f} "
            f"(>= {MIN_COSINE}), nearest neighbour kept for {self.neighbours_kept} of "
            f"{self.neighbours} retrieval sentences (all); {self.sentences} held-out sentences, "
            f"{self.batching}"
        )

    def as_dict(self) -> dict[str, Any]:
        return _recorded(
            self,
            mean_cosine=self.mean_cosine,
            min_cosine=self.min_cosine,
            nearest_neighbour={"kept": self.neighbours_kept, "of": self.neighbours},
            sentences=self.sentences,
            batching=self.batching,
            thresholds={"mean_cosine": MEAN_COSINE, "min_cosine": MIN_COSINE},
        )


@dataclasses.dataclass(frozen=True)
class ClassifierFigures:
    backend: str
    top1_agreement: float
    top5_overlap: float
    lowest_top5_overlap: int
    images: int
    photos: int
    kept_fp32: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= TOP1_AGREEMENT and self.top5_overlap >= TOP5_OVERLAP

    def summary(self) -> str:
        return (
            f"top-1 agreement {self.top1_agreement:.2%} (>= {TOP1_AGREEMENT:.0%}), top-5 overlap "
            f"{self.top5_overlap:.4f} (>= {TOP5_OVERLAP}, lowest {self.lowest_top5_overlap} of 5); "
            f"{self.images} held-out images from {self.photos} photos"
        )

    def as_dict(self) -> dict[str, Any]:
        return _recorded(
            self,
            top1_agreement=self.top1_agreement,
            top5_overlap=self.top5_overlap,
            lowest_top5_overlap=self.lowest_top5_overlap,
            images=self.images,
            photos=self.photos,
            thresholds={"top1_agreement": TOP1_AGREEMENT, "top5_overlap": TOP5_OVERLAP},
        )


def _recorded(figures: Figures, **measured: Any) -> dict[str, Any]:
    return {
        "backend": figures.backend,
        "reference": "eager torch fp32",
        "passed": figures.passed,
        **measured,
        "kept_fp32": list(figures.kept_fp32),
        "built_with": tool_versions(),
    }


def requested(config: Mapping[str, Any]) -> str:
    """The backend the effective model config asks for (``eager`` when none)."""
    section = config.get("handler") or {}
    backend = section.get("backend", EAGER) if isinstance(section, Mapping) else EAGER
    return str(backend)


def built_files(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The files ``servekit archive`` adds for the backend ``config`` asks for (none for eager)."""
    backend = requested(config)
    return (ONNX_FILES[backend], GATE_FILE) if backend in ONNX_FILES else ()


def carries_weights(config: Mapping[str, Any]) -> bool:
    """Whether the archive carries the spec's ``serialized_file``: on eager only. An ONNX
    backend's file holds the weights; the eager ones are read at archive time, for the gate,
    and would only make the archive bigger (MiniLM's int8 .mar: 35 MB without, 118 MB with)."""
    return requested(config) == EAGER


def tool_versions() -> dict[str, str]:
    found = {}
    for name in TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def digest_inputs(config: Mapping[str, Any]) -> bytes:
    """What else decides an archive's bytes when it carries a backend: the exporting tools'
    versions, the code that builds and gates it and the held-out sets (empty for eager)."""
    if requested(config) == EAGER:
        return b""
    tools = json.dumps(tool_versions(), sort_keys=True).encode()
    code = b"".join((Path(__file__).parent / name).read_bytes() for name in CODE)
    data = b"".join(p.read_bytes() for p in sorted(HELDOUT_DIR.rglob("*")) if p.is_file())
    return tools + code + data


def stage(spec: ModelSpec, config: Mapping[str, Any], stage_dir: Path) -> Figures | None:
    """For ``servekit archive``: build the backend the config asks for into ``stage_dir`` (the
    archive's files: handlers, runtime, the spec's extra files); ``GateRefused`` naming its
    figures if it fails."""
    backend = requested(config)
    if backend == EAGER:
        return None
    if backend not in BACKENDS:
        raise ConfigError(
            f"{spec.source}: handler option 'backend' is {backend!r}; "
            f"allowed: {', '.join(BACKENDS)}"
        )
    with eager_handler(spec, config, stage_dir) as handler:
        figures: Figures = builder().build_all([backend], handler, stage_dir)[0]
    if not figures.passed:
        for name in (ONNX_FILES[backend], GATE_FILE):
            (stage_dir / name).unlink(missing_ok=True)
        raise GateRefused(
            f"backend {backend} of '{spec.name}' fails the accuracy gate against eager fp32: "
            f"{figures.summary()}; not archived (serve it with backend: eager)"
        )
    return figures


@contextlib.contextmanager
def eager_handler(spec: ModelSpec, config: Mapping[str, Any], staged: Path) -> Iterator[Any]:
    """The spec's handler loaded in-process (eager, no warm-up) on the staged archive files
    ``staged`` and the spec's model file, as a worker would load it; it must offer backends."""
    from servekit.runtime.backends import OnnxBackendHandler  # torch: only to build a backend

    with tempfile.TemporaryDirectory(prefix="backend-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        for path in staged.iterdir():
            (model_dir / path.name).symlink_to(path.resolve())
        for top in (spec.handler, spec.serialized_file):  # the archiver puts them at the top
            if top is not None and not (model_dir / top.name).exists():
                (model_dir / top.name).symlink_to(top.resolve())
        _manifest(spec, config, model_dir)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # TorchServe's import-time notices
                model = LocalModel(model_dir, batch_size=1)
        except ModelLoadFailed as err:
            raise ArchiveError(f"the eager model does not load, so no backend: {err}") from None
        with contextlib.closing(model):
            handler = model.handler
            if not isinstance(handler, OnnxBackendHandler):
                raise ConfigError(
                    f"{spec.source}: handler option 'backend' needs a handler that offers "
                    f"backends; {type(handler).__name__} does not subclass OnnxBackendHandler "
                    "(see docs/handlers.md)"
                )
            yield handler


def _manifest(spec: ModelSpec, config: Mapping[str, Any], model_dir: Path) -> None:
    """What the archiver would write: MAR-INF/MANIFEST.json and the config, eager, no warm-up."""
    section = {k: v for k, v in (config.get("handler") or {}).items() if k != "backend"}
    section["warmup"] = False
    eager = {**config, "handler": section}
    (model_dir / "model-config.yml").write_text(yaml.safe_dump(eager, sort_keys=True))
    manifest = {
        "model": {
            "modelName": spec.name,
            "handler": spec.handler.name,
            "modelVersion": spec.version,
            "configFile": "model-config.yml",
        }
    }
    (model_dir / "MAR-INF").mkdir()
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))


def builder() -> Any:
    """``servekit.serve.onnx_build``, imported only when a backend is built: it loads torch,
    onnx and ONNX Runtime, which ``servekit archive`` (and ``inspect``, ``examples``, which
    import it) do without for every eager model."""
    try:
        from servekit.serve import onnx_build
    except ModuleNotFoundError as err:
        raise ArchiveError(
            f"the ONNX backends need the package {err.name} (pip install 'torchserve-kit[{EXTRA}]')"
        ) from None
    return onnx_build

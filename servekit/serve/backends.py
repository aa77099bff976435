"""The ``text-embedding`` kind's ONNX backends, built at archive time behind an accuracy gate.

A spec asks for one with ``handler_options: {backend: onnxruntime}`` (fp32) or
``onnxruntime-int8`` (dynamic int8, per-channel weights, the layers that cost accuracy left in
fp32). ``servekit archive`` then exports the model with torch's ONNX exporter, quantizes it,
and compares it with eager torch fp32 on a held-out set written for the purpose: the mean
cosine of the embeddings must be >= 0.99, the lowest >= 0.98, and every sentence of a small
retrieval set must keep its nearest neighbour. A backend that fails is not archived (exit 1,
its figures named); one that passes goes in the .mar with its figures (``backend-gate.json``).

    servekit gate minilm                       # every backend's figures, nothing archived
    servekit gate minilm --backend onnxruntime-int8 --json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from servekit import project
from servekit.config.specs import ModelSpec, effective_config, load_spec, read_yaml
from servekit.errors import ArchiveError, ConfigError, ToolkitError, os_error_text
from servekit.runtime.backends import (
    BACKENDS,
    EAGER,
    EXTRA,
    GATE_FILE,
    INPUTS,
    ONNX_FILES,
    ONNXRUNTIME,
    ONNXRUNTIME_INT8,
    OUTPUT,
    OnnxEncoder,
)
from servekit.runtime.text import mean_pool

HELDOUT = Path(__file__).parent / "heldout" / "text_embedding.json"
MEAN_COSINE = 0.99
MIN_COSINE = 0.98
BATCH = 16
OPSET = 18
KEEP_FP32 = (r"encoder\.layer\.\d+\.output\.dense", r"encoder\.layer\.[2-5]\.intermediate\.dense")
"""Linear layers ``onnxruntime-int8`` leaves in fp32 (module paths, as regular expressions): every
feed-forward down-projection and the up-projections of layers 2-5, the layers whose int8
versions cost the most, quantized one at a time. On MiniLM's held-out set: all in int8, lowest
cosine 0.939; down-projections kept, 0.962; these 10 of 36 kept, 0.984 (mean 0.9975); the whole
feed-forward kept (12), 0.987, but then only the attention projections are int8."""
TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime")
"""The packages whose versions decide the exported bytes (and so the archive's digest)."""


class GateRefused(ArchiveError):
    """A backend that does not match eager fp32 closely enough: it is not archived."""


@dataclasses.dataclass(frozen=True)
class GateFigures:
    backend: str
    mean_cosine: float
    min_cosine: float
    neighbours_kept: int
    neighbours: int
    sentences: int
    kept_fp32: tuple[str, ...] = ()

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
            f"{self.neighbours} retrieval sentences (all); {self.sentences} held-out sentences"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reference": "eager torch fp32",
            "passed": self.passed,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "nearest_neighbour": {"kept": self.neighbours_kept, "of": self.neighbours},
            "sentences": self.sentences,
            "thresholds": {"mean_cosine": MEAN_COSINE, "min_cosine": MIN_COSINE},
            "kept_fp32": list(self.kept_fp32),
            "built_with": tool_versions(),
        }


@dataclasses.dataclass(frozen=True)
class Heldout:
    sentences: list[str]
    retrieval: list[str]

    @classmethod
    def read(cls, path: Path = HELDOUT) -> Heldout:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data["sentences"]), list(data["retrieval"]))


def requested(config: Mapping[str, Any]) -> str:
    """The backend the effective model config asks for (``eager`` when none)."""
    section = config.get("handler") or {}
    backend = section.get("backend", EAGER) if isinstance(section, Mapping) else EAGER
    return str(backend)


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
    versions, this module and the held-out set (empty for eager)."""
    if requested(config) == EAGER:
        return b""
    tools = json.dumps(tool_versions(), sort_keys=True).encode()
    return tools + Path(__file__).read_bytes() + HELDOUT.read_bytes()


# --- the reference and the candidates ---------------------------------------------------------


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


def stage(spec: ModelSpec, config: Mapping[str, Any], stage_dir: Path) -> GateFigures | None:
    """For ``servekit archive``: build the backend the config asks for into ``stage_dir`` (the
    archive's files, the model's among them); ``GateRefused`` naming its figures if it fails."""
    backend = requested(config)
    if backend == EAGER:
        return None
    if backend not in BACKENDS:
        raise ConfigError(
            f"{spec.source}: handler option 'backend' is {backend!r}; "
            f"allowed: {', '.join(BACKENDS)}"
        )
    with tempfile.TemporaryDirectory(prefix="backend-") as tmp:
        model_dir = _model_dir(spec, Path(tmp))
        figures = build(backend, model_dir, stage_dir, _pooling(config))
    if not figures.passed:
        for name in (ONNX_FILES[backend], GATE_FILE):
            (stage_dir / name).unlink(missing_ok=True)
        raise GateRefused(
            f"backend {backend} of '{spec.name}' fails the accuracy gate against eager fp32: "
            f"{figures.summary()}; not archived (serve it with backend: eager)"
        )
    return figures


def _model_dir(spec: ModelSpec, tmp: Path) -> Path:
    """The spec's files under the names the archive gives them (a Hugging Face directory)."""
    model_dir = tmp / "model"
    model_dir.mkdir()
    files = [*spec.extra_files, *([spec.serialized_file] if spec.serialized_file else [])]
    for path in files:
        (model_dir / path.name).symlink_to(path.resolve())
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{spec.source}: handler option 'backend' needs a Hugging Face model (config.json "
            "among the spec's files): the backends export the text-embedding kind"
        )
    return model_dir


def _pooling(config: Mapping[str, Any]) -> str:
    section = config.get("handler") or {}
    return str(section.get("pooling", "mean")) if isinstance(section, Mapping) else "mean"


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


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit gate",
        description="Build a text-embedding model's ONNX backends in a temporary directory and "
        "show how closely each matches eager fp32 on the held-out set (nothing is archived). "
        "Exit codes: 0 every backend shown passes, 1 one fails the gate or cannot be built, "
        "2 usage or bad input.",
    )
    parser.add_argument("name", metavar="NAME", help="the model (a spec in config/)")
    parser.add_argument(
        "--backend",
        action="append",
        choices=[b for b in BACKENDS if b != EAGER],
        help="only this backend (repeatable; default: every one)",
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="the specs (default: the project's config/)"
    )
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    backends = args.backend or [b for b in BACKENDS if b != EAGER]
    try:
        where = project.from_args(args)
        specs_dir = args.config_dir or where.specs_dir
        path = specs_dir / f"{args.name}.yml"
        if not path.is_file():
            known = sorted(p.stem for p in specs_dir.glob("*.yml"))
            parser.error(f"no spec {args.name!r} in {specs_dir} (there are: {', '.join(known)})")
        spec = load_spec(path, where.root)
        defaults = read_yaml(where.model_config) if where.model_config.is_file() else {}
        config = effective_config(spec, defaults)
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            model_dir = _model_dir(spec, Path(tmp))
            out = Path(tmp) / "out"
            out.mkdir()
            results = build_all(backends, model_dir, out, _pooling(config))
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except ToolkitError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{parser.prog}: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            verdict = "PASS" if r.passed else "FAIL"
            print(f"{spec.name} {r.backend:<17} {verdict}  {r.summary()}")
            if r.kept_fp32:
                print(f"{'':<{len(spec.name) + 19}}left in fp32: {', '.join(r.kept_fp32)}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

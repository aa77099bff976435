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
import dataclasses
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from servekit import project
from servekit.config.specs import ModelSpec, effective_config, load_spec, read_yaml
from servekit.errors import ArchiveError, ConfigError, ToolkitError, os_error_text
from servekit.runtime.backend_names import BACKENDS, EAGER, EXTRA, GATE_FILE, ONNX_FILES

HELDOUT = Path(__file__).parent / "heldout" / "text_embedding.json"
MEAN_COSINE = 0.99
MIN_COSINE = 0.98
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


def built_files(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The files ``servekit archive`` adds for the backend ``config`` asks for (none for eager)."""
    backend = requested(config)
    return (ONNX_FILES[backend], GATE_FILE) if backend in ONNX_FILES else ()


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
    versions, the code that builds and gates it and the held-out set (empty for eager)."""
    if requested(config) == EAGER:
        return b""
    tools = json.dumps(tool_versions(), sort_keys=True).encode()
    code = Path(__file__).read_bytes() + (Path(__file__).parent / "onnx_build.py").read_bytes()
    return tools + code + HELDOUT.read_bytes()


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
        figures: GateFigures = _builder().build(backend, model_dir, stage_dir, _pooling(config))
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


def _builder() -> Any:
    """``servekit.serve.onnx_build``, imported only when a backend is built: it loads torch,
    transformers and onnx, which ``servekit archive`` (and ``inspect``, ``examples``, which
    import it) do without for every eager model."""
    try:
        from servekit.serve import onnx_build
    except ModuleNotFoundError as err:
        raise ArchiveError(
            f"the ONNX backends need the package {err.name} (pip install 'torchserve-kit[{EXTRA}]')"
        ) from None
    return onnx_build


def _pooling(config: Mapping[str, Any]) -> str:
    section = config.get("handler") or {}
    return str(section.get("pooling", "mean")) if isinstance(section, Mapping) else "mean"


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
            results = _builder().build_all(backends, model_dir, out, _pooling(config))
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

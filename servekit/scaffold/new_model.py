"""``servekit new-model NAME --kind KIND --weights FILE``: a model from the files people have.

    servekit new-model iris --kind tabular --weights iris.pt --module nets.py:IrisNet \\
        --features sepal_length,sepal_width,petal_length,petal_width --labels species.txt
    servekit new-model digits --kind image-classifier --weights digits.ts --image-size 8 \\
        --resize 0 --mode L
    servekit new-model minilm --kind text-embedding --weights path/to/hf-model-dir

It writes, in the project (``--project DIR`` or the current directory):

- ``handlers/<name>.py``: a handler on the kind's runtime class, with ``parse_request`` and
  ``postprocess`` to edit;
- ``config/<name>.yml``: the spec (weights, kind options as ``handler_options``, batching);
- ``models/<name>/``: the weights (a Hugging Face directory's files) and ``labels.json``;
- ``examples/<name>.json`` (``.png`` for images): an example request;
- ``tests/test_<name>.py`` (in-process, through TorchServe's worker code) and
  ``tests/test_<name>_e2e.py`` (a real TorchServe).

Before anything is written, the model is archived and served in-process from a staging
directory: the weights load, the example request and a batch of two are answered. Bad input
(a missing file, bytes that are not what ``--format`` or the file name says, a module that does
not import, weights that do not fit it, a name TorchServe refuses) exits 2 with the reason and
leaves the project as it was. Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import keyword
import logging
import os
import shutil
import signal
import string
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

import servekit
from servekit import project
from servekit.config import schema
from servekit.config.findings import ERROR
from servekit.config.specs import load_spec, read_yaml
from servekit.config.validate import validate_paths
from servekit.errors import ConfigError, ToolkitError
from servekit.runtime import weights
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.text import has_tokenizer, tokenizer_files
from servekit.scaffold.kinds import KINDS, Example, Kind, foreign_options
from servekit.scaffold.paths import in_the_way
from servekit.serve.archive import build
from servekit.serve.harness import LocalModel, ModelLoadFailed, Request
from servekit.serve.server import read_properties

SUFFIX_FORMATS = {
    ".pt2": weights.EXPORT,
    ".safetensors": weights.SAFETENSORS,
    ".ts": weights.TORCHSCRIPT,
    ".torchscript": weights.TORCHSCRIPT,
    ".jit": weights.TORCHSCRIPT,
}
# Files of a Hugging Face directory a served model needs; the rest (other frameworks'
# weights, READMEs of training runs, subdirectories) stays out of the archive.
HF_SKIPPED = (".h5", ".msgpack", ".ot", ".onnx", ".tflite", ".md", ".gitattributes")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
STAGE_PREFIX = ".servekit-new-model-"
# Top-level modules of an archive or a worker a handler module must not be named like (the
# installed ones are found by importlib; these may not be installed where new-model runs).
WORKER_MODULES = ("handlers", "servekit", "ts", "model_archiver", "models", "examples", "tests")
CHECK_TIMEOUT = 600.0  # s: loading and serving the example in-process
CHECK_STORE = ".store"  # in the staging directory: where the checked archive is built
ARCHIVE_FILES = (".mar", ".mar.inputs", ".mar.sha256")  # an archive and its stamps


@dataclasses.dataclass
class Plan:
    """What the command writes: project-relative path -> bytes or a file to copy."""

    name: str
    module: str
    fmt: str = ""
    example: str = ""
    """The example request's project-relative path."""
    content_type: str = ""
    files: dict[str, bytes | Path] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    derived: set[str] = dataclasses.field(default_factory=set)
    """Files made from the others (the archive): replaced without ``--force``."""
    keep_stage: bool = False
    """Set when a failed write could not put a replaced file back: its copy is in the stage."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit new-model",
        description="Add a model to the project from its weights: handler, spec, example "
        "request and tests, checked by serving it in-process before anything is written. "
        "Exit codes: 0 written, 1 the check failed unexpectedly, 2 bad input.",
    )
    parser.add_argument("name", help="the model's name (letters, digits, '_', '-', '.')")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="a TorchScript file, a torch.export .pt2, a state dict (.pt, .safetensors) or a "
        "Hugging Face model directory (text kinds)",
    )
    parser.add_argument(
        "--format",
        choices=weights.FORMATS,
        help="what --weights holds (default: read from its bytes); checked against them",
    )
    parser.add_argument(
        "--module",
        metavar="TARGET",
        help="for a state dict: the class (or function) that builds the model, as "
        "'package.module:Class' (importable, or under handlers/) or 'path/to/file.py:Class' "
        "(copied into handlers/)",
    )
    parser.add_argument(
        "--module-args", default="", metavar="JSON", help="its arguments: a JSON object or list"
    )
    parser.add_argument(
        "--labels", type=Path, metavar="FILE", help="class names: a JSON list or one a line"
    )
    parser.add_argument("--version", default="1.0", help="the model version (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="(8)")
    parser.add_argument("--max-batch-delay", type=int, default=20, metavar="MS", help="(20)")
    parser.add_argument(
        "--check-timeout",
        type=float,
        default=CHECK_TIMEOUT,
        metavar="S",
        help=f"give up the in-process check after S seconds ({CHECK_TIMEOUT:g})",
    )
    tabular = parser.add_argument_group("tabular")
    tabular.add_argument("--features", metavar="N|NAMES", help="values per row, or their names")
    tabular.add_argument("--task", choices=("classification", "regression"))
    image = parser.add_argument_group("image-classifier")
    image.add_argument("--image-size", type=int, metavar="PX", help="the model's input side")
    image.add_argument(
        "--resize", type=int, metavar="PX", help="short side before the centre crop (0: none)"
    )
    image.add_argument("--mode", choices=("RGB", "L"), help="RGB (default) or L (grey)")
    image.add_argument("--mean", metavar="M,M,M", help="per channel, after scaling to [0, 1]")
    image.add_argument("--std", metavar="S,S,S", help="per channel")
    image.add_argument("--top-k", type=int, metavar="K", help="classes listed (default 5)")
    text = parser.add_argument_group("text-embedding, text-classifier")
    text.add_argument("--max-tokens", type=int, metavar="N", help="tokens per string (256)")
    text.add_argument("--pooling", choices=("mean", "cls"), help="text-embedding: mean or cls")
    custom = parser.add_argument_group("custom")
    custom.add_argument("--input-shape", metavar="D,D,...", help="one request's tensor shape")
    custom.add_argument("--input-dtype", choices=("float32", "float64", "int64", "int32"))
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return new_model(args)
    except ModelLoadError as err:  # the runtime's checks of an option (module_args, ...)
        raise ConfigError(str(err)) from None


def new_model(args: argparse.Namespace) -> int:
    started = time.monotonic()
    where = project.from_args(args)
    kind = KINDS[args.kind]
    foreign = foreign_options(args)
    if foreign:
        raise ConfigError(f"{', '.join(foreign)}: not options of --kind {kind.name}")
    module = check_name(args.name)
    fmt = weights_format(args, kind)
    plan = Plan(args.name, module, fmt)
    options = kind.handler_options(args, fmt)
    labels = read_labels(args.labels) if args.labels else None
    example = kind.example(args, options)
    plan_files(plan, args, kind, fmt, options, labels, example, where.root)
    refuse_existing(plan, where.root, args.force)
    with staged(plan, where.root) as stage, deadline(args.check_timeout):
        check_spec(plan, stage, where.root)
        answer = check_served(plan, stage, where.root, example, args.batch_size)
        keep_archive(plan, stage)
        commit(plan, stage, where.root)
    report(plan, where.root, answer, time.monotonic() - started)
    return 0


# ----- checking the input ----------------------------------------------------------------------
def check_name(name: str) -> str:
    """The handler module's name for model ``name``; ``ConfigError`` for a name TorchServe (or
    Python, for the module) refuses."""
    if not schema.MODEL_NAME.fullmatch(name) or len(name) > 128:
        raise ConfigError(
            f"model name {name!r}: TorchServe refuses it: letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    module = name.replace("-", "_").replace(".", "_")
    if not module.isidentifier() or keyword.iskeyword(module):
        raise ConfigError(
            f"model name {name!r}: its handler module would be '{module}', which Python cannot "
            "import (it must not start with a digit or be a keyword): choose another name"
        )
    if module in sys.stdlib_module_names or module in WORKER_MODULES or _find_spec(module):
        raise ConfigError(
            f"model name {name!r}: its handler would be the top-level module '{module}', which "
            "shadows a module of that name the worker imports (the standard library, torch, "
            "TorchServe or another installed package): choose another name"
        )
    return module


def weights_format(args: argparse.Namespace, kind: Kind) -> str:
    """The format of ``--weights`` (``''`` when there are none), checked against its bytes, the
    file name and what the kind reads."""
    path: Path | None = args.weights
    if path is None:
        if kind.weights_required:
            raise ConfigError(f"--weights is required for --kind {kind.name}")
        if args.module or args.format:
            raise ConfigError("--module and --format describe --weights: give --weights too")
        return ""
    if not path.exists():
        raise ConfigError(f"--weights {path}: no such file or directory")
    found = weights.sniff(path)
    said = args.format or SUFFIX_FORMATS.get(path.suffix.lower())
    if said is not None and not weights.matches(found, said):
        what = weights.DESCRIBED.get(found or "", "none of the formats servekit reads")
        raise ConfigError(
            f"--weights {path} is said to be {weights.DESCRIBED[said]} "
            f"({'--format' if args.format else 'its name'}), but its bytes are {what}"
        )
    if found is None:
        raise ConfigError(
            f"--weights {path}: not {' nor '.join(weights.DESCRIBED[f] for f in kind.formats)}"
        )
    if found not in kind.formats:
        raise ConfigError(
            f"--weights {path} is {weights.DESCRIBED[found]}; --kind {kind.name} reads "
            f"{' or '.join(weights.DESCRIBED[f] for f in kind.formats)}"
        )
    if found in weights.NEEDS_MODULE and not args.module:
        raise ConfigError(
            f"--weights {path} is {weights.DESCRIBED[found]}: it holds only weights; give the "
            "class they fit with --module package.module:Class (or path/to/file.py:Class)"
        )
    if found not in weights.NEEDS_MODULE and (args.module or args.module_args):
        raise ConfigError(
            f"--module and --module-args are for a state dict; --weights {path} is "
            f"{weights.DESCRIBED[found]}, which needs no class"
        )
    return found


def read_labels(path: Path) -> list[str]:
    """Class names from a JSON list, a JSON object {index: name}, or one name a line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Notepad writes, is not a name
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--labels {path}: cannot read it as UTF-8 text: {err}") from None
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        try:
            indexed = {int(k): v for k, v in value.items()}
        except ValueError:
            raise ConfigError(f"--labels {path}: a JSON object must map indices to names") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise ConfigError(f"--labels {path}: the indices must be 0..{len(indexed) - 1}")
        value = [indexed[i] for i in range(len(indexed))]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"--labels {path}: give a JSON list of names, or one name a line")
    names = [v.strip() for v in value]
    if not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"--labels {path}: names must be non-empty and distinct")
    return names


# ----- the plan ---------------------------------------------------------------------------------
def plan_files(
    plan: Plan,
    args: argparse.Namespace,
    kind: Kind,
    fmt: str,
    options: dict[str, Any],
    labels: list[str] | None,
    example: Example,
    root: Path,
) -> None:
    name, module = plan.name, plan.module
    model_dir = f"models/{name}"
    serialized: str | None = None
    extra: list[str] = []
    weights_options: dict[str, Any] = {}
    if fmt == weights.HUGGINGFACE:
        copied = hf_files(args.weights)
        for file in copied:
            plan.files[f"{model_dir}/{file.name}"] = file
        main = next((f for f in copied if f.name in HF_WEIGHTS), None) or next(
            (f for f in copied if f.suffix in (".safetensors", ".bin")), None
        )
        if main is None:
            raise ConfigError(
                f"--weights {args.weights}: a Hugging Face directory without weights "
                f"({' or '.join(HF_WEIGHTS)})"
            )
        serialized = f"{model_dir}/{main.name}"
        extra = [f"{model_dir}/{f.name}" for f in copied if f != main]
    elif fmt:
        file_name = args.weights.name
        serialized = f"{model_dir}/{file_name}"
        plan.files[serialized] = args.weights
        weights_options = {"weights": file_name, "weights_format": fmt}
        if fmt in weights.NEEDS_MODULE:
            weights_options["module"] = module_target(plan, args.module, root)
            if args.module_args:
                weights.arguments(args.module_args)  # a ModelLoadError names what is wrong
                weights_options["module_args"] = args.module_args
    if labels is not None:
        plan.files[f"{model_dir}/labels.json"] = json.dumps(labels, indent=1).encode() + b"\n"
        extra.append(f"{model_dir}/labels.json")
    example_name = f"{name}{example.suffix}"
    plan.example, plan.content_type = f"examples/{example_name}", example.content_type
    plan.files[plan.example] = example.body
    handler_options = weights_options | options
    plan.files[f"config/{name}.yml"] = spec_text(
        args, kind, module, serialized, extra, handler_options
    )
    plan.files[f"handlers/{module}.py"] = handler_text(args, kind, fmt)
    if not (root / "handlers" / "__init__.py").is_file():  # the package the worker imports
        plan.files["handlers/__init__.py"] = b""
    fields = {
        "name": name,
        "example": example_name,
        "content_type": example.content_type,
        "answer_keys": repr(kind.answer_keys(options)),
        "bad_status": str(kind.bad_status),
        "bad_type": "application/octet-stream"
        if kind.name == "image-classifier"
        else "application/json",
        "format": fmt,
    }
    plan.files[f"tests/test_{module}.py"] = render("test_model.py.tmpl", fields)
    plan.files[f"tests/test_{module}_e2e.py"] = render("test_model_e2e.py.tmpl", fields)


def hf_files(directory: Path) -> list[Path]:
    """The top-level files of a Hugging Face directory a served model needs."""
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(HF_SKIPPED)
    )
    if not any(p.name == "config.json" for p in files):
        raise ConfigError(f"--weights {directory}: no config.json: not a Hugging Face directory")
    if not has_tokenizer(directory):
        raise ConfigError(
            f"--weights {directory}: no tokenizer files ({tokenizer_files()}): save the "
            "tokenizer into it too (tokenizer.save_pretrained), or every word reads as unknown"
        )
    return files


def module_target(plan: Plan, target: str, root: Path) -> str:
    """``--module`` as the worker imports it: a file is copied into ``handlers/``; a dotted
    module must be under the project's ``handlers/`` or installed."""
    where, _, attrs = target.rpartition(":")
    if where.endswith(".py"):
        source = Path(where)
        if not source.is_file():
            raise ConfigError(f"--module {target}: no such file {source}")
        stem = source.stem
        if not stem.isidentifier() or stem.startswith("__") or stem == plan.module:
            raise ConfigError(
                f"--module {target}: the file is copied to handlers/{stem}.py; "
                + ("that is the handler's own name" if stem == plan.module else "not a module name")
                + ": rename it"
            )
        plan.files[f"handlers/{stem}.py"] = source
        result = f"handlers.{stem}:{attrs}"
        weights.split_target(result)
        return result
    module_name, _ = weights.split_target(target)
    if module_name.split(".")[0] == "handlers":
        file = root.joinpath(*module_name.split(".")).with_suffix(".py")
        if not file.is_file():
            raise ConfigError(f"--module {target}: no file {file.relative_to(root)}")
        return target
    found = _find_spec(module_name)
    if found is not None and not found.has_location:  # built in, frozen: installed with Python
        return target
    origin = Path(found.origin) if found is not None and found.origin else None
    if origin is None:
        raise ConfigError(
            f"--module {target}: cannot import {module_name} (not installed, not under "
            "handlers/); give the file instead: --module path/to/file.py:Class"
        )
    if origin.resolve().is_relative_to(root.resolve()):
        raise ConfigError(
            f"--module {target}: {origin.relative_to(root.resolve())} is in the project but "
            "not under handlers/, so no archive ships it: give it as a file "
            f"(--module {origin.relative_to(root.resolve())}:{attrs}), servekit copies it"
        )
    plan.notes.append(
        f"{module_name.split('.')[0]} is an installed package: the server's Python needs it too"
    )
    return target


def _find_spec(module_name: str) -> Any:
    try:
        return importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None


def spec_text(
    args: argparse.Namespace,
    kind: Kind,
    module: str,
    serialized: str | None,
    extra: list[str],
    handler_options: dict[str, Any],
) -> bytes:
    source = f"from {args.weights.name}" if args.weights else "without weights (edit the handler)"
    data: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "handler": f"handlers/{module}.py",
    }
    if serialized:
        data["serialized_file"] = serialized
    data["extra_files"] = extra
    data["model_config"] = {"batchSize": args.batch_size, "maxBatchDelay": args.max_batch_delay}
    data["handler_options"] = handler_options
    header = (
        f"# {args.name}: a {kind.name} model {source}, written by `servekit new-model`.\n"
        f"# handler_options are {kind.options} (servekit.runtime.{kind.module}); "
        f"`servekit show-config {args.name}` shows them with the defaults.\n"
    )
    body = yaml.safe_dump(data, sort_keys=False, width=100)
    return (header + body).encode()


def handler_text(args: argparse.Namespace, kind: Kind, fmt: str) -> bytes:
    names = sorted({kind.handler, kind.options, *kind.imports} - {"Row", "features"})
    lines = []
    if kind.item == "np.ndarray":
        lines += ["import numpy as np", ""]
    lines.append("from servekit.runtime.decoding import Payload")
    if kind.module == "tabular":
        names = sorted({*names, "Row", "features"})
    lines.append(f"from servekit.runtime.{kind.module} import {', '.join(names)}")
    if kind.item == "TextInput":
        lines.append("from servekit.runtime.text_batching import TextInput")
    source = (
        f"{args.weights.name},\n{weights.DESCRIBED[fmt]}"
        if args.weights
        else "no weights yet (it echoes its input: load your model in load_model)"
    )
    fields = {
        "name": args.name,
        "summary": kind.summary,
        "version": servekit.__version__,
        "source": source,
        "base": kind.handler,
        "module": kind.module,
        "imports": "\n".join(lines),
        "class_name": "".join(p.title() for p in check_name(args.name).split("_")) + "Handler",
        "options": kind.options,
        "item": kind.item,
        "parse": kind.parse,
    }
    return render("handler.py.tmpl", fields)


def render(template: str, fields: dict[str, str]) -> bytes:
    text = resources.files("servekit.scaffold").joinpath("templates", "model", template)
    return string.Template(text.read_text(encoding="utf-8")).substitute(fields).encode()


# ----- staging, checking, writing ---------------------------------------------------------------
def refuse_existing(plan: Plan, root: Path, force: bool) -> None:
    """``ConfigError`` listing the files that exist, unless ``force`` (or they are the same);
    even with ``force``, nothing but a regular file is replaced (a directory, a link, a file
    where a directory must go are the user's to move)."""
    reasons = [in_the_way(root, rel) for rel in sorted({*plan.files, *archive_paths(plan)})]
    blocked = [why for why in reasons if why is not None]
    if blocked:
        raise ConfigError(
            f"model '{plan.name}': {'; '.join(blocked)}: move it, or choose another name"
        )
    clashes = [
        rel
        for rel, content in plan.files.items()
        if (root / rel).exists() and not _same(root / rel, content)
    ]
    if clashes and not force:
        raise ConfigError(
            f"model '{plan.name}': these files exist: {', '.join(sorted(clashes))}; "
            "choose another name, or --force to replace them"
        )


def _same(path: Path, content: bytes | Path) -> bool:
    if not path.is_file():
        return False
    if isinstance(content, Path):
        return content.resolve() == path.resolve() or (
            content.stat().st_size == path.stat().st_size
            and content.read_bytes() == path.read_bytes()
        )
    return path.read_bytes() == content


@contextlib.contextmanager
def staged(plan: Plan, root: Path) -> Iterator[Path]:
    """A staging copy of the project's handlers plus the plan's files, removed on exit."""
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=root))
    try:
        handlers = root / "handlers"
        if handlers.is_dir():
            shutil.copytree(
                handlers, stage / "handlers", ignore=shutil.ignore_patterns("__pycache__")
            )
        for rel, content in plan.files.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        yield stage
    finally:
        if not plan.keep_stage:
            shutil.rmtree(stage, ignore_errors=True)


def check_served(plan: Plan, stage: Path, root: Path, example: Example, batch: int) -> Any:
    """Archive the staged model and serve its example, alone and (when ``batch`` > 1) in a
    batch of two, through TorchServe's worker code; the example's answer, or ``ConfigError``
    with the reason. The worker's log lines are shown only when the check fails."""
    spec = load_spec(stage / "config" / f"{plan.name}.yml", stage)
    defaults_file = root / "model-config.yml"
    defaults = read_yaml(defaults_file) if defaults_file.is_file() else {}
    store = stage / CHECK_STORE
    build(spec, defaults, stage, store, force=True)
    request = Request.raw(example.body, example.content_type)
    quiet_transformers()
    with captured_logs() as logs, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecations and load warnings: not the user's
        try:
            with LocalModel.from_mar(store / f"{plan.name}.mar", batch_size=2) as served:
                alone = served.predict([request])[0]
                seen = len(logs)
                pair = served.predict([request, request]) if batch > 1 else [alone, alone]
        except ModelLoadFailed as err:
            raise ConfigError(
                f"model '{plan.name}' does not load as served: {_cause(err)}{_tail(logs)}"
            ) from None
    if alone.status != 200:
        raise ConfigError(
            f"model '{plan.name}' loads, but its example request got {alone.status}: "
            f"{alone.body[:300].decode(errors='replace')}{_tail(logs)}"
        )
    failed_batch = [r for r in logs[seen:] if r.levelno >= logging.WARNING]
    if failed_batch or [r.status for r in pair] != [200, 200]:
        hint = (
            "an exported program with a fixed batch size: export it with a dynamic batch "
            "dimension (torch.export.Dim), or give --batch-size 1"
            if plan.fmt == weights.EXPORT
            else "a model that takes one input at a time: make it take a batch, or give "
            "--batch-size 1"
        )
        raise ConfigError(
            f"model '{plan.name}' answers one request but fails on a batch of two: {hint}"
            f"{_tail(logs[seen:])}"
        )
    return alone.json()


def quiet_transformers() -> None:
    """No progress bars or load reports from transformers on the terminal (their warnings
    are captured with the worker's log lines)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ModuleNotFoundError:
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record while the model is served in-process, kept from the terminal."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers, root.level = [Keep()], logging.INFO
    try:
        yield records
    finally:
        root.handlers, root.level = saved, level


def _tail(records: list[logging.LogRecord], lines: int = 8) -> str:
    """The warnings and errors among ``records`` (not TorchServe's own import warnings), or
    nothing: the reason given is then the whole story."""
    worst = [
        r
        for r in records
        if r.levelno >= logging.ERROR
        or (r.levelno >= logging.WARNING and not r.name.startswith("ts."))
    ]
    shown = [f"  {r.levelname} {r.name}: {r.getMessage()[:500]}" for r in worst[-lines:]]
    return "\nThe worker's last log lines:\n" + "\n".join(shown) if shown else ""


def _cause(err: ModelLoadFailed) -> str:
    """The reason a load failed, without the model's name and without a TorchScript trace
    (its last line says what went wrong)."""
    text = str(err).split(": ", 1)[1] if ": " in str(err) else str(err)
    lines = [line for line in text.splitlines() if line.strip()]
    reason = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return reason if len(reason) <= 600 else reason[:600] + "..."


def archive_paths(plan: Plan) -> list[str]:
    """Where the checked archive and its stamps go in the project."""
    return [f"model_store/{plan.name}{suffix}" for suffix in ARCHIVE_FILES]


class CheckTimeout(ConfigError):
    """The check of the model did not finish in time."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """``CheckTimeout`` after ``seconds`` (a module that hangs at import, a forward that never
    returns), and SIGTERM as an exit that still runs the clean-up; both restored after."""

    def expired(signum: int, frame: Any) -> None:
        raise CheckTimeout(
            f"the model was not loaded and served within {seconds:g} s (--check-timeout): does "
            "its module or its forward hang?"
        )

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread
        return
    saved = signal.signal(signal.SIGALRM, expired), signal.signal(signal.SIGTERM, terminated)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def check_spec(plan: Plan, stage: Path, root: Path) -> None:
    """The staged spec passes ``servekit validate`` against the project's own config."""
    for name in ("config.properties", "model-config.yml"):
        if (root / name).is_file():
            shutil.copyfile(root / name, stage / name)
    spec = stage / "config" / f"{plan.name}.yml"
    errors = [f for f in validate_paths([spec], stage) if f.severity == ERROR]
    if errors:
        shown = "; ".join(f.text().replace(str(stage) + os.sep, "") for f in errors[:5])
        raise ConfigError(f"model '{plan.name}': its spec would not validate: {shown}")


def keep_archive(plan: Plan, stage: Path) -> None:
    """The archive just checked goes to ``model_store/`` with its stamps, so ``servekit archive``
    (``make serve``) finds it up to date: the staging directory holds the project's handlers
    and the model's files at the same paths, so its inputs are the project's."""
    store = stage / "model_store"
    store.mkdir(exist_ok=True)
    for suffix in ARCHIVE_FILES:
        name = f"{plan.name}{suffix}"
        os.replace(stage / CHECK_STORE / name, store / name)
        plan.files[f"model_store/{name}"] = store / name
        plan.derived.add(f"model_store/{name}")


def commit(plan: Plan, stage: Path, root: Path) -> None:
    """Move the staged files into the project; on any failure, put everything back."""
    moved: list[tuple[Path, Path | None]] = []  # (destination, its backup)
    made: list[Path] = []  # directories this made, outermost first
    backups = stage / ".backup"
    try:
        for rel in sorted(plan.files):
            target = root / rel
            missing = [p for p in target.relative_to(root).parents if not (root / p).exists()]
            for directory in reversed(missing):
                (root / directory).mkdir()
                made.append(root / directory)
            backup = None
            if target.exists():
                backup = backups / rel
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, backup)
            moved.append((target, backup))
            os.replace(stage / rel, target)
    except OSError as err:
        lost = []
        for target, backup in reversed(moved):
            try:
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
            except OSError:
                lost.append(target)
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if lost:  # keep the staging directory: it holds the user's files that were replaced
            plan.keep_stage = True
            raise ToolkitError(
                f"model '{plan.name}': writing into {root} failed ({err}), and putting back "
                f"{', '.join(str(p.relative_to(root)) for p in lost)} failed too: the files "
                f"that were there are in {backups}"
            ) from None
        raise ToolkitError(
            f"model '{plan.name}': writing into {root} failed ({err}); nothing was changed"
        ) from None


def report(plan: Plan, root: Path, answer: Any, seconds: float) -> None:
    print(f"Model '{plan.name}' written and checked in {seconds:.1f} s:")
    for rel in sorted(plan.files):
        print(f"  {rel}" + ("  (archived and checked)" if rel.endswith(".mar") else ""))
    shown = json.dumps(answer)
    print(f"Its example request was answered: {shown[:200]}{'...' if len(shown) > 200 else ''}")
    for note in plan.notes:
        print(f"Note: {note}")
    properties = root / "config.properties"
    text = properties.read_text() if properties.is_file() else ""
    loaded = read_properties(text).get("load_models", "")
    if loaded.strip() != "all" and f"{plan.name}.mar" not in loaded.split(","):
        print(
            f"Note: config.properties loads '{loaded}': add {plan.name}.mar to load_models to "
            "serve it with the others"
        )
    print(
        "Next: make serve (it validates, archives and starts TorchServe), then\n"
        f"  curl -s -X POST http://127.0.0.1:8080/predictions/{plan.name} "
        f"-H 'Content-Type: {plan.content_type}' --data-binary @{plan.example}"
    )


if __name__ == "__main__":
    sys.exit(main())

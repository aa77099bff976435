"""Load the weights people have: TorchScript, ``torch.export`` programs, state dicts (``.pt`` or
``.safetensors``) with the class they fit, and Hugging Face model directories.

``sniff`` tells the format from the bytes, never from the file name, so a file that is not what
it is said to be gets an error naming both. ``load`` builds the model on a device with errors that
name the file and what went wrong. ``servekit new-model`` uses both before it writes anything; the
kinds' handlers (``servekit.runtime.tabular`` and the others) use ``load`` in the worker.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions

TORCHSCRIPT = "torchscript"
EXPORT = "export"
STATE_DICT = "state-dict"
SAFETENSORS = "safetensors"
HUGGINGFACE = "huggingface"
FORMATS = (TORCHSCRIPT, EXPORT, STATE_DICT, SAFETENSORS, HUGGINGFACE)
NEEDS_MODULE = (STATE_DICT, SAFETENSORS)
DESCRIBED = {
    TORCHSCRIPT: "a TorchScript file (torch.jit.save)",
    EXPORT: "a torch.export program (.pt2, torch.export.save)",
    STATE_DICT: "a state dict saved with torch.save",
    SAFETENSORS: "a safetensors file",
    HUGGINGFACE: "a Hugging Face model directory (config.json, weights, tokenizer)",
}
# Common checkpoint wrappers around a state dict (training loops save these).
WRAPPERS = ("state_dict", "model_state_dict", "model")
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


@dataclasses.dataclass(frozen=True)
class WeightsOptions(HandlerOptions):
    """Where a kind's model comes from: ``servekit new-model`` writes these into the spec."""

    weights: str = ""
    """The weights file in the archive ('' for a Hugging Face directory: the model directory)."""
    weights_format: str = ""
    """One of torchscript, export, state-dict, safetensors, huggingface."""
    module: str = ""
    """For a state dict: 'package.module:Class' (or a function) that builds the model."""
    module_args: str = ""
    """For a state dict: the JSON arguments of that class: an object (keywords) or a list."""

    def check(self) -> None:
        super().check()
        if self.weights_format and self.weights_format not in FORMATS:
            raise ModelLoadError(
                f"handler option 'weights_format' is {self.weights_format!r}; "
                f"allowed: {', '.join(FORMATS)}"
            )
        if self.weights_format in NEEDS_MODULE and not self.module:
            raise ModelLoadError(
                f"handler option 'module' is empty; a {self.weights_format} file holds only "
                "weights: name the class that builds the model ('package.module:Class')"
            )
        if self.module:
            split_target(self.module)
        arguments(self.module_args)


def sniff(path: Path) -> str | None:
    """The format of ``path`` from its bytes (``None``: none of ``FORMATS``)."""
    if path.is_dir():
        return HUGGINGFACE if (path / "config.json").is_file() else None
    try:
        with path.open("rb") as stream:
            head = stream.read(9)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if len(head) == 9 and head[8:9] == b"{":
        size = struct.unpack("<Q", head[:8])[0]
        if 0 < size <= min(MAX_SAFETENSORS_HEADER, os.path.getsize(path) - 8):
            return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return STATE_DICT  # torch.save's legacy (pickle) format
    return None


def _zip_format(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    tails = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in tails or "models/model.json" in tails:
        return EXPORT
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return TORCHSCRIPT
    if "data.pkl" in tails:
        return STATE_DICT
    return None


def matches(found: str | None, said: str) -> bool:
    """Bytes of format ``found`` are what ``said`` promises (a safetensors file is a state dict)."""
    return found == said or (said == STATE_DICT and found == SAFETENSORS)


def check_format(path: Path, said: str) -> str:
    """The format ``path`` holds when it is what ``said`` promises; a ``ModelLoadError`` naming
    both otherwise."""
    found = sniff(path)
    if found is not None and matches(found, said):
        return found
    what = DESCRIBED.get(found or "", "none of the formats servekit reads")
    raise ModelLoadError(
        f"'{path.name}' is said to be {DESCRIBED.get(said, said)}, but its bytes are {what}"
    )


def split_target(target: str) -> tuple[str, tuple[str, ...]]:
    """``'package.module:Class.attr'`` as its module and attribute path."""
    module, sep, attrs = target.partition(":")
    names = tuple(attrs.split(".")) if attrs else ()
    if (
        not sep
        or not all(part.isidentifier() for part in module.split("."))
        or not names
        or not all(name.isidentifier() for name in names)
    ):
        raise ModelLoadError(
            f"module {target!r} is not 'package.module:Class' (dotted module, colon, the class "
            "or function that builds the model)"
        )
    return module, names


def arguments(text: str) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments in ``module_args`` (JSON list or object)."""
    if not text:
        return [], {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ModelLoadError(f"module_args {text[:80]!r} is not JSON: {err}") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise ModelLoadError(
        f"module_args must be a JSON list (positional) or object (keywords); got "
        f"{type(value).__name__}"
    )


def resolve(target: str) -> Any:
    """The object ``'package.module:Class.attr'`` names, imported."""
    module_name, names = split_target(target)
    try:
        found: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # the user's module may raise, even exit, at import
        raise ModelLoadError(
            f"module {target!r}: cannot import {module_name}: {type(err).__name__}: {err}"
        ) from None
    for name in names:
        if not hasattr(found, name):
            raise ModelLoadError(f"module {target!r}: {module_name} has no {'.'.join(names)}")
        found = getattr(found, name)
    if not callable(found):
        raise ModelLoadError(f"module {target!r} is not a class or function")
    return found


def build_module(target: str, args_text: str) -> torch.nn.Module:
    """Call ``target`` with ``module_args``; it must give a ``torch.nn.Module``."""
    args, kwargs = arguments(args_text)
    factory = resolve(target)
    try:
        module = factory(*args, **kwargs)
    except (Exception, SystemExit) as err:
        raise ModelLoadError(
            f"module {target!r} with module_args {args_text or '(none)'}: "
            f"{type(err).__name__}: {err}"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"module {target!r} gave a {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def read_state(path: Path, fmt: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a state dict file, on ``device``; unwraps ``{"state_dict": ...}``."""
    try:
        if fmt == SAFETENSORS:
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device=str(device))
        else:
            state = torch.load(path, map_location=device, weights_only=True)
    except ModuleNotFoundError as err:
        raise ModelLoadError(
            f"'{path.name}': reading {fmt} needs the package {err.name}: pip install it"
        ) from None
    except Exception as err:  # torch and safetensors raise many types for a broken file
        raise ModelLoadError(
            f"'{path.name}' cannot be read as a state dict: {_unreadable(err)}"
        ) from None
    if isinstance(state, Mapping):
        for key in WRAPPERS:
            if len(state) <= 4 and isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(
            f"'{path.name}' does not hold a state dict (a mapping of names to tensors); "
            f"it holds {type(state).__name__}"
        )
    return dict(state)


def _unreadable(err: Exception) -> str:
    """Why ``torch.load`` refused a file, in one line: torch's own message for a pickled object
    is many lines with terminal escapes, offering to run the pickle's code (never done here)."""
    text = str(err).strip()
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled or "weights_only" in text.lower() or "weights only" in text.lower():
        what = pickled.group(1) if pickled else "Python objects"
        return (
            f"it pickles {what}, not only tensors (a whole pickled model is not read: "
            "save model.state_dict(), or TorchScript)"
        )
    return text.splitlines()[0] if text else type(err).__name__


def fit(module: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str, target: str) -> None:
    """Load ``state`` into ``module`` strictly; the error lists what is missing or extra."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing, unexpected = _key_mismatch(module, state)
        if missing or unexpected:
            why = f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        else:  # same names, other shapes: torch's message says which
            lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            why = "; ".join(lines[:3]) or str(err).splitlines()[0]
        raise ModelLoadError(f"'{name}' does not fit {target}: {why}") from None


def _key_mismatch(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def load(
    path: Path, fmt: str, device: torch.device, module: str = "", module_args: str = ""
) -> torch.nn.Module:
    """The model in ``path`` (a file, or a directory for Hugging Face), in eval mode on
    ``device``; ``ModelLoadError`` naming the file and the reason otherwise."""
    found = check_format(path, fmt)
    if fmt == TORCHSCRIPT:
        loaded = _guarded(
            path,
            lambda: torch.jit.load(str(path), map_location=device),  # type: ignore[no-untyped-call]
        )
    elif fmt == EXPORT:
        loaded = _guarded(path, lambda: torch.export.load(str(path)).module().to(device))
    elif fmt in NEEDS_MODULE:
        built = build_module(module, module_args)
        fit(built, read_state(path, found, device), path.name, module)
        loaded = built.to(device)
    else:
        raise ModelLoadError(
            f"'{path.name}' is {DESCRIBED[HUGGINGFACE]}: load it with the text kinds "
            "(servekit.runtime.text), which know its task"
        )
    if not isinstance(loaded, torch.nn.Module):
        raise ModelLoadError(f"'{path.name}' did not give a torch.nn.Module")
    return _eval(loaded)


def _eval(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode where the module supports it (an exported program refuses ``.eval()``:
    it was traced in the mode it runs in)."""
    try:
        return module.eval()
    except (NotImplementedError, RuntimeError):
        return module


def _guarded(path: Path, read: Any) -> Any:
    try:
        return read()
    except ModelLoadError:
        raise
    except Exception as err:  # torch raises many types for a broken or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"'{path.name}' cannot be loaded: {first[:300]}") from None

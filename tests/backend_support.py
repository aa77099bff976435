"""What the backend tests of every handler share (MiniLM's and EfficientNet's, unit and e2e):
a handler loaded as servekit archive loads it, an archive unpacked with a backend added, and a
shipped spec copied under another name asking for a backend."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from servekit.config.specs import effective_config, load_spec, read_yaml
from servekit.runtime.backend_names import GATE_FILE, ONNX_FILES
from servekit.serve import archive, backends
from tests.conftest import ROOT


@contextmanager
def eager_handler(name: str, tmp: Path) -> Iterator[Any]:
    """The shipped spec ``name``'s eager handler on its staged archive files."""
    spec = load_spec(ROOT / "config" / f"{name}.yml", ROOT)
    config = effective_config(spec, read_yaml(ROOT / "model-config.yml"))
    staged = archive.stage_files(spec, ROOT, tmp / "stage")
    with backends.eager_handler(spec, config, staged) as loaded:
        yield loaded


def unpacked(
    mar: Path, into: Path, backend: str, built: Path, figures: dict[str, Any] | None = None
) -> Path:
    """The eager ``mar`` unpacked with ``backend``'s file from ``built`` (and its gate figures)
    added, as servekit archive builds it."""
    with zipfile.ZipFile(mar) as opened:
        opened.extractall(into)
    if backend != "eager":
        shutil.copy(built / ONNX_FILES[backend], into / ONNX_FILES[backend])
    if figures is not None:
        (into / GATE_FILE).write_text(json.dumps(figures))
    config = yaml.safe_load((into / "model-config.yml").read_text())
    config["handler"]["backend"] = backend
    (into / "model-config.yml").write_text(yaml.safe_dump(config))
    return into


def spec_asking(shipped: str, name: str, backend: str, specs: Path) -> Path:
    """The shipped spec asking for ``backend``, under ``name``, written into ``specs``."""
    spec = yaml.safe_load((ROOT / "config" / f"{shipped}.yml").read_text())
    spec["name"] = name
    spec["handler_options"]["backend"] = backend
    (specs / f"{name}.yml").write_text(yaml.safe_dump(spec))
    return specs


def archived(specs: Path, name: str, store: Path) -> Path:
    """``specs``' spec ``name`` archived into ``store`` (its own)."""
    defaults = read_yaml(ROOT / "model-config.yml")
    archive.build(load_spec(specs / f"{name}.yml", ROOT), defaults, ROOT, store)
    return store

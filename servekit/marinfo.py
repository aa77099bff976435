"""Read a built ``.mar`` and check it against the model spec it was built from.

>>> info = read_mar(Path("model_store/iris.mar"))              # doctest: +SKIP
>>> info.manifest["model"]["modelName"], sorted(info.files)[:2]  # doctest: +SKIP
('iris', ['MAR-INF/MANIFEST.json', 'handlers/__init__.py'])
>>> check_against_spec(info, spec, defaults, root)                # doctest: +SKIP
[]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from servekit.archive import HANDLER_PACKAGE, handler_sources
from servekit.errors import ArchiveError
from servekit.reproducible import MANIFEST
from servekit.specs import ModelSpec, effective_config


@dataclasses.dataclass(frozen=True)
class MarInfo:
    """What a ``.mar`` holds: its manifest, its model config and every file's bytes."""

    path: Path
    manifest: Mapping[str, Any]
    model_config: Mapping[str, Any] | None
    files: Mapping[str, bytes]

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def recorded_sha256(self) -> str | None:
        """The digest ``make archive`` wrote beside the archive, if any."""
        stamp = self.path.with_name(self.path.name + ".sha256")
        return stamp.read_text().split()[0] if stamp.is_file() else None


def read_mar(path: Path) -> MarInfo:
    """Open ``path``; ``ArchiveError`` names what is wrong with a broken archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    except (OSError, zipfile.BadZipFile) as err:
        raise ArchiveError(f"{path}: not a readable .mar (zip) file: {err}") from None
    if MANIFEST not in files:
        raise ArchiveError(f"{path}: no {MANIFEST}; not built by torch-model-archiver")
    manifest = json.loads(files[MANIFEST])
    config_name = manifest.get("model", {}).get("configFile")
    config = yaml.safe_load(files[config_name]) if config_name in files else None
    return MarInfo(path, manifest, config, files)


def check_against_spec(
    info: MarInfo, spec: ModelSpec, defaults: Mapping[str, Any], root: Path
) -> list[str]:
    """Every difference between the archive and what its spec says it should hold."""
    model = info.manifest.get("model", {})
    problems = [
        f"manifest {field} is {model.get(field)!r}; the spec says {want!r}"
        for field, want in (
            ("modelName", spec.name),
            ("modelVersion", spec.version),
            ("handler", spec.handler.name),
            ("serializedFile", spec.serialized_file.name if spec.serialized_file else None),
        )
        if model.get(field) != want
    ]
    config = effective_config(spec, defaults)
    if info.model_config != config:
        problems.append(
            f"model config differs from model-config.yml + {spec.source.name}: "
            f"archive {info.model_config!r}, spec {config!r}"
        )
    expected = {f"{HANDLER_PACKAGE}/{p.name}": p for p in handler_sources(root)}
    expected |= {p.name: p for p in [spec.handler, *spec.extra_files]}
    if spec.serialized_file is not None:
        expected[spec.serialized_file.name] = spec.serialized_file
    for name, source in sorted(expected.items()):
        if name not in info.files:
            problems.append(f"{name} is missing from the archive")
        elif info.files[name] != source.read_bytes():
            problems.append(f"{name} differs from {source.relative_to(root)}")
    known = {*expected, MANIFEST, model.get("configFile")}
    problems += [
        f"{name} is in the archive but not in the spec" for name in info.files if name not in known
    ]
    recorded = info.recorded_sha256()
    if recorded is not None and recorded != info.sha256():
        problems.append(f"sha256 is {info.sha256()}; {info.path.name}.sha256 records {recorded}")
    return problems

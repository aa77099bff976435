"""A model's archive for each backend, for the benchmarks and the tuner to serve side by side.

The eager archive is the project's own (``model_store/<model>.mar``, as ``servekit archive``
built it from the spec). Any other backend is the same spec with ``handler_options.backend``
set, under the name ``<model>-<backend>``, built by ``servekit archive``'s own code (export,
quantization and the accuracy gate included: a backend that fails the gate is refused) into
``build/bench-backends/`` of the project, where an unchanged one is not built again.

    >>> served_name("minilm", "onnxruntime-int8")
    'minilm-onnxruntime-int8'
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import yaml

from servekit.config.specs import load_spec, read_yaml
from servekit.errors import ConfigError
from servekit.project import Project
from servekit.runtime.backend_names import BACKENDS, EAGER

STORE = Path("build") / "bench-backends"
"""Where the backends' archives and their specs go, relative to the project."""


@dataclasses.dataclass(frozen=True)
class BackendArchive:
    """What a server loads to serve ``model`` on ``backend``: ``name``.mar from ``store``."""

    model: str
    backend: str
    name: str
    store: Path

    @property
    def mar(self) -> Path:
        return self.store / f"{self.name}.mar"


def private_copy(archive: BackendArchive, directory: Path) -> BackendArchive:
    """``archive`` copied into ``directory``: a long run registers its own copy, so that a
    ``servekit archive`` (or a test's rebuild) of the same model meanwhile cannot break a
    registration halfway (TorchServe: "Failed to save model")."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive.mar, directory / archive.mar.name)
    return dataclasses.replace(archive, store=directory)


def served_name(model: str, backend: str) -> str:
    """The model name a backend's archive is served under (the model's own for eager)."""
    return model if backend == EAGER else f"{model}-{backend}"


def spec_backend(project: Project, model: str) -> str:
    """The backend the project's spec of ``model`` asks for (eager when it names none, or when
    the project has no spec of it: a user's archive alone is served as it is)."""
    spec = project.spec(model)
    return backend_of(spec) if spec.is_file() else EAGER


def backend_of(spec: Path) -> str:
    """The backend the spec at ``spec`` asks for (eager when it names none)."""
    options = (read_yaml(spec) or {}).get("handler_options") or {}
    return str(options.get("backend", EAGER)) if isinstance(options, dict) else EAGER


def archive_for(project: Project, model: str, backend: str) -> BackendArchive:
    """``model``'s archive on ``backend``: the project's own when its spec asks for that
    backend, else built (if its inputs changed) into ``build/bench-backends/``."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is unknown; known: {', '.join(BACKENDS)}")
    if backend == spec_backend(project, model):
        return BackendArchive(model, backend, model, project.archive(model).parent)
    from servekit.serve.archive import build  # torch and the exporter: only when needed

    store = project.root / STORE
    name = served_name(model, backend)
    specs = store / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    spec = read_yaml(project.spec(model)) or {}
    spec["name"] = name
    spec["handler_options"] = {**(spec.get("handler_options") or {}), "backend": backend}
    path = specs / f"{name}.yml"
    path.write_text(
        f"# {model}'s spec with backend {backend}, written for the benchmarks; do not edit\n"
        + yaml.safe_dump(spec, sort_keys=False)
    )
    defaults = read_yaml(project.model_config) or {}
    build(load_spec(path, project.root), defaults, project.root, store)
    return BackendArchive(model, backend, name, store)

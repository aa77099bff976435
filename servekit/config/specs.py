"""Model specs (``config/<model>.yml``) and the effective model config of each model.

The effective config is ``model-config.yml`` with the spec's ``model_config``
overrides on top and its ``handler_options`` merged into the ``handler:`` section.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from servekit.config import schema
from servekit.config.findings import key_text, show
from servekit.config.limits import is_file, not_a_file, read_capped
from servekit.config.yamlpos import load_yaml
from servekit.errors import ConfigError
from servekit.runtime.decoding import brief

SPEC_KEYS = tuple(schema.SPEC)  # one source of truth: servekit/config/schema.py
REQUIRED = schema.SPEC_REQUIRED
BAD_NAME = (
    "TorchServe refuses it: a model name holds only letters, digits, '_', '-' and '.', "
    "starting with a letter or digit"
)
HANDLER_IN_MODEL_CONFIG = (
    "model_config: handler: is dropped whenever model-config.yml's handler: section or "
    "handler_options sets an option; write these options under handler_options: instead"
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model: what ``servekit archive`` puts into ``model_store/<name>.mar``."""

    name: str
    version: str
    handler: Path
    serialized_file: Path | None
    extra_files: tuple[Path, ...]
    model_config: Mapping[str, Any]
    handler_options: Mapping[str, Any]
    source: Path

    def inputs(self) -> list[Path]:
        """Files whose content goes into the archive (besides the handlers package)."""
        files = [self.source, self.handler, *self.extra_files]
        return files + ([self.serialized_file] if self.serialized_file else [])


def read_yaml(path: Path) -> dict[Any, Any]:
    """A YAML file that holds a mapping (an empty file is ``{}``); ``ConfigError`` names the
    file, and the line for malformed YAML, when it is unreadable, not YAML or not a mapping."""
    data = _read_document(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {not_a_mapping(data)}")
    return data


def not_a_mapping(data: Any) -> str:
    """What is wrong with a YAML document that should be a mapping and is ``data``."""
    shown = f"{type(data).__name__} ({brief(data, 60, written=True, length=True)})"
    return f"the file holds a YAML {shown}, not a mapping of 'key: value' lines"


def _read_document(path: Path) -> Any:
    if (why := not_a_file(path)) is not None:
        raise ConfigError(f"{path}: {why}")
    try:
        return load_yaml(read_capped(path).decode("utf-8")).data
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}") from None


def load_spec(path: Path, root: Path) -> ModelSpec:
    """Read one spec; paths in it are relative to ``root`` (the project)."""
    data = _read_document(path)
    if data is None:
        raise ConfigError(f"{path}: empty; a model spec needs at least {', '.join(REQUIRED)}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a model spec must be a mapping with keys {', '.join(SPEC_KEYS)}"
        )
    for key in data:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(key_text(key), SPEC_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: unknown key '{key_text(key)}'{hint}")
    for key in REQUIRED:
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(
                f"{path}: key '{key}' must be a non-empty string, got {show(data.get(key))}"
            )
    if data["name"] != path.stem:
        raise ConfigError(f"{path}: name '{data['name']}' must match the file name '{path.stem}'")
    if not schema.MODEL_NAME.fullmatch(data["name"]):
        raise ConfigError(f"{path}: name {show(data['name'])}: {BAD_NAME}")
    model_config = _mapping(path, data, "model_config")
    if "handler" in model_config:
        raise ConfigError(f"{path}: {HANDLER_IN_MODEL_CONFIG}")
    serialized = data.get("serialized_file")
    return ModelSpec(
        name=data["name"],
        version=data["version"],
        handler=_existing(path, root, "handler", data["handler"]),
        serialized_file=_existing(path, root, "serialized_file", serialized)
        if serialized
        else None,
        extra_files=tuple(_existing(path, root, "extra_files", f) for f in _list(path, data)),
        model_config=model_config,
        handler_options=_mapping(path, data, "handler_options"),
        source=path,
    )


def load_specs(config_dir: Path, root: Path) -> list[ModelSpec]:
    """Every spec in ``config_dir``, sorted by name."""
    return [load_spec(p, root) for p in sorted(config_dir.glob("*.yml"))]


def effective_config(spec: ModelSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with the spec's overrides; handler options merged into ``handler:``."""
    merged = {**defaults, **spec.model_config}
    handler = {**_handler_section(defaults), **spec.handler_options}
    if handler:
        merged["handler"] = handler
    return merged


def config_sources(
    spec: ModelSpec, defaults: Mapping[str, Any], defaults_path: Path
) -> dict[str, tuple[Any, str]]:
    """Each effective key with its value and the file it came from."""
    sources: dict[str, tuple[Any, str]] = {}
    for key, value in defaults.items():
        if key != "handler":
            sources[key] = (value, str(defaults_path))
    for key, value in _handler_section(defaults, defaults_path).items():
        sources[f"handler.{key}"] = (value, str(defaults_path))
    for key, value in spec.model_config.items():
        sources[key] = (value, f"{spec.source} (model_config)")
    for key, value in spec.handler_options.items():
        sources[f"handler.{key}"] = (value, f"{spec.source} (handler_options)")
    return sources


def _handler_section(defaults: Mapping[str, Any], path: Path | None = None) -> Mapping[Any, Any]:
    """The defaults' ``handler:`` section; ``ConfigError`` when it is not a mapping."""
    section = defaults.get("handler") or {}
    if not isinstance(section, dict):
        where = f"{path}: " if path is not None else "the default model config: "
        raise ConfigError(
            f"{where}key 'handler' must be a mapping of handler options, got {show(section)}"
        )
    return section


def _existing(spec: Path, root: Path, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{spec}: key '{key}' must be a path string, got {show(value)}")
    path = root / value
    if not is_file(path):
        raise ConfigError(f"{spec}: key '{key}' names '{value}', which does not exist")
    return path


def _list(spec: Path, data: Mapping[str, Any]) -> list[Any]:
    value = data.get("extra_files") or []
    if not isinstance(value, list):
        raise ConfigError(f"{spec}: key 'extra_files' must be a list of paths, got {show(value)}")
    return value


def _mapping(spec: Path, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{spec}: key '{key}' must be a mapping, got {show(value)}")
    return value

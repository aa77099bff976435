"""The option ``backend`` of every handler that offers backends (MiniLM's text-embedding kind
and EfficientNet-Lite0): its values, the archive digest it changes, an eager handler's metadata,
and an archive that lacks the backend's file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from handlers.imagenet_options import ImagenetOptions
from servekit.config.specs import effective_config, load_spec
from servekit.runtime.backend_names import ONNX_FILES, ONNXRUNTIME, ONNXRUNTIME_INT8
from servekit.runtime.backends import BackendOptions
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.text import EmbeddingOptions
from servekit.serve import archive, backends
from servekit.serve.harness import LocalModel, ModelLoadFailed
from tests.backend_support import unpacked
from tests.conftest import ROOT

OPTIONS = [EmbeddingOptions, ImagenetOptions]
MODELS = [("minilm", ONNXRUNTIME_INT8), ("efficientnet", ONNXRUNTIME)]


@pytest.mark.parametrize("options", OPTIONS)
def test_backend_defaults_to_eager_and_takes_each_backend(options: type[BackendOptions]) -> None:
    assert options().backend == "eager"
    for name in ("eager", "onnxruntime", "onnxruntime-int8"):
        assert options.from_section({"backend": name}).backend == name


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("value", ["onnx", "int8", "ONNXRUNTIME", ""])
def test_an_unknown_backend_is_refused_naming_the_allowed_ones(
    options: type[BackendOptions], value: str
) -> None:
    allowed = r"'backend' is .*allowed: eager, onnxruntime, onnxruntime-int8"
    with pytest.raises(ModelLoadError, match=allowed):
        options.from_section({"backend": value})


@pytest.mark.parametrize("options", OPTIONS)
def test_a_backend_that_is_no_string_is_refused(options: type[BackendOptions]) -> None:
    with pytest.raises(ModelLoadError, match=r"'backend' .* expected str"):
        options.from_section({"backend": 8})


@pytest.mark.parametrize(("model", "backend"), MODELS)
def test_the_digest_changes_with_the_backend(model: str, backend: str) -> None:
    spec = load_spec(ROOT / "config" / f"{model}.yml", ROOT)
    eager = effective_config(spec, {})
    other = {**eager, "handler": {**eager["handler"], "backend": backend}}
    assert backends.digest_inputs(eager) == b""
    assert archive.inputs_digest(spec, eager, ROOT) != archive.inputs_digest(spec, other, ROOT)


@pytest.mark.parametrize(("model", "backend"), MODELS)
def test_the_eager_handler_describes_its_backend(
    model: str, backend: str, model_store: Path
) -> None:
    with LocalModel.from_mar(model_store / f"{model}.mar") as loaded:
        assert loaded.describe()["backend"] == {"name": "eager"}


@pytest.mark.parametrize(("model", "backend"), MODELS)
def test_a_backend_missing_from_the_archive_fails_the_load_naming_it(
    model: str, backend: str, model_store: Path, tmp_path: Path
) -> None:
    model_dir = unpacked(model_store / f"{model}.mar", tmp_path / "model", "eager", tmp_path)
    config = yaml.safe_load((model_dir / "model-config.yml").read_text())
    config["handler"]["backend"] = backend
    (model_dir / "model-config.yml").write_text(yaml.safe_dump(config))
    missing = ONNX_FILES[backend].replace(".", r"\.")
    with pytest.raises(ModelLoadFailed, match=rf"holds no {missing}: rebuild it"):
        LocalModel(model_dir)

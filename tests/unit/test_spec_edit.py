"""Writing tuned values under model_config: in a spec, keeping the rest of the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from servekit.config.spec_edit import set_section, write_sections
from servekit.config.specs import load_spec
from servekit.config.validate import has_errors, validate_paths
from servekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TUNED = {"batchSize": 8, "maxBatchDelay": 10, "minWorkers": 2, "maxWorkers": 2}


def test_existing_keys_get_the_new_value_and_the_note_other_lines_stay() -> None:
    text = (
        "# a model\nname: m\nmodel_config:\n  batchSize: 16   # old comment\n"
        "  responseTimeout: 60\nhandler_options:\n  x: 1\n"
    )
    edited = set_section(text, "model_config", TUNED, "tuned")
    assert edited.splitlines() == [
        "# a model",
        "name: m",
        "model_config:",
        "  batchSize: 8  # tuned",
        "  responseTimeout: 60",
        "  maxBatchDelay: 10  # tuned",
        "  minWorkers: 2  # tuned",
        "  maxWorkers: 2  # tuned",
        "handler_options:",
        "  x: 1",
    ]


def test_the_section_is_added_when_the_spec_has_none() -> None:
    edited = set_section("name: m\nversion: '1'\n", "model_config", {"batchSize": 4}, "tuned")
    assert yaml.safe_load(edited) == {"name": "m", "version": "1", "model_config": {"batchSize": 4}}


def test_the_indentation_of_the_section_is_kept() -> None:
    text = "model_config:\n    batchSize: 1\n    # a comment line\n    maxBatchDelay: 3\n"
    edited = set_section(text, "model_config", {"maxBatchDelay": 7, "batchSize": 2}, "n")
    assert edited == (
        "model_config:\n    batchSize: 2  # n\n    # a comment line\n    maxBatchDelay: 7  # n\n"
    )


def test_a_flow_style_section_is_refused_not_mangled() -> None:
    with pytest.raises(ConfigError, match="not a block of 'key: value' lines"):
        set_section("model_config: {batchSize: 4}\n", "model_config", {"batchSize": 8}, "n")


def test_an_edit_that_would_not_hold_the_values_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "m.yml"
    original = "model_config:\n  batchSize: 4\n  batchSize: 5\n"  # duplicate: the last wins
    spec.write_text(original)
    with pytest.raises(ConfigError, match=rf"{spec}: model_config would not hold"):
        write_sections(spec, {"model_config": {"batchSize": 8}}, "n")
    assert spec.read_text() == original


def test_the_project_minilm_spec_edited_still_loads_and_validates(tmp_path: Path) -> None:
    spec_path = tmp_path / "minilm.yml"
    shutil.copy(ROOT / "config" / "minilm.yml", spec_path)
    if not (ROOT / "build" / "models" / "minilm" / "model.safetensors").exists():
        pytest.skip("build/models/minilm missing: run make install")
    write_sections(
        spec_path, {"model_config": TUNED, "handler_options": {"torch_threads": 1}}, "tuned"
    )
    spec = load_spec(spec_path, ROOT)  # the spec's paths are relative to the repo
    assert {k: spec.model_config[k] for k in TUNED} == TUNED
    assert spec.model_config["responseTimeout"] == 60  # untouched
    assert spec.handler_options["group_size"] == 8
    assert spec.handler_options["torch_threads"] == 1
    assert not has_errors(validate_paths([spec_path], ROOT))


def test_only_the_two_override_sections_can_be_edited() -> None:
    with pytest.raises(ConfigError, match="section 'name': only model_config, handler_options"):
        set_section("name: m\n", "name", {"x": 1}, "n")


def test_handler_options_are_set_like_model_config() -> None:
    text = "handler_options:\n  group_size: 8\nmodel_config:\n  batchSize: 4\n"
    edited = set_section(text, "handler_options", {"torch_threads": 1}, "n")
    assert yaml.safe_load(edited) == {
        "handler_options": {"group_size": 8, "torch_threads": 1},
        "model_config": {"batchSize": 4},
    }


@pytest.mark.parametrize("empty", ["{}", "null", "~", ""])
def test_an_empty_section_becomes_a_block(empty: str) -> None:
    text = f"name: m\nhandler_options: {empty}   # the handler: section\nversion: '1'\n"
    edited = set_section(text, "handler_options", {"torch_threads": 1}, "n")
    assert edited.splitlines()[1:3] == [
        "handler_options:  # the handler: section",
        "  torch_threads: 1  # n",
    ]
    assert yaml.safe_load(edited)["handler_options"] == {"torch_threads": 1}


def test_the_project_iris_spec_takes_torch_threads(tmp_path: Path) -> None:
    spec_path = tmp_path / "iris.yml"
    shutil.copy(ROOT / "config" / "iris.yml", spec_path)
    write_sections(spec_path, {"handler_options": {"torch_threads": 1}}, "tuned")
    assert load_spec(spec_path, ROOT).handler_options == {"torch_threads": 1}
    assert not has_errors(validate_paths([spec_path], ROOT))

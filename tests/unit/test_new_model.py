"""``servekit new-model`` in-process: what it writes for a good model, and for every kind of bad
input an exit 2 naming the problem with the project left exactly as it was."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from handlers.nets import DigitsNet, IrisNet
from servekit.cli import main as servekit
from servekit.scaffold.new_model import check_name, read_labels
from servekit.serve.harness import LocalModel, Request

IRIS_FEATURES = "sepal_length,sepal_width,petal_length,petal_width"
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained iris net as TorchScript and as a state dict with its class in a file;
    a digits net exported with a fixed batch of one."""
    out = tmp_path_factory.mktemp("weights")
    iris = IrisNet()
    iris.load_state_dict(torch.load(ROOT / "models" / "iris.pt", weights_only=True))
    iris.eval()
    traced = torch.jit.trace(iris, torch.zeros(2, 4))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(out / "iris.ts"))
    torch.save(iris.state_dict(), out / "iris_state.pt")
    (out / "nets.py").write_text((ROOT / "handlers" / "nets.py").read_text())
    (out / "broken.py").write_text("raise ImportError('this module is broken on purpose')\n")
    (out / "species.txt").write_text("setosa\nversicolor\nvirginica\n")
    (out / "four.txt").write_text("a\nb\nc\nd\n")
    (out / "notes.txt").write_text("not a model\n")
    static = torch.export.export(DigitsNet().eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(static, str(out / "static.pt2"))
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    assert servekit(["init", str(root)]) == 0
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (hidden staging directories included)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def new_model(project: Path, *args: str) -> int:
    return servekit(["new-model", *args, "--project", str(project)])


def test_a_torchscript_tabular_model_is_written_checked_and_archived(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = new_model(
        project, "iris", "--kind", "tabular", "--weights", str(weights / "iris.ts"),
        "--features", IRIS_FEATURES, "--labels", str(weights / "species.txt"),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"label": "setosa"' in out  # the example request's answer, shown
    for rel in (
        "handlers/iris.py",
        "config/iris.yml",
        "models/iris/iris.ts",
        "models/iris/labels.json",
        "examples/iris.json",
        "tests/test_iris.py",
        "tests/test_iris_e2e.py",
        "model_store/iris.mar",
    ):
        assert (project / rel).is_file(), rel
    spec = yaml.safe_load((project / "config" / "iris.yml").read_text())
    assert spec["handler_options"]["weights_format"] == "torchscript"
    assert spec["handler_options"]["feature_names"] == IRIS_FEATURES.split(",")
    assert json.loads((project / "models/iris/labels.json").read_text())[0] == "setosa"
    assert not list(project.glob(".servekit-*")), "the staging directory is left behind"
    assert servekit(["archive", "--project", str(project)]) == 0
    assert "up to date" in capsys.readouterr().out  # the checked archive is the project's
    assert servekit(["validate", "--project", str(project)]) == 0
    with LocalModel.from_mar(project / "model_store" / "iris.mar") as served:
        reply = served.predict([Request.json({"features": [6.7, 3.0, 5.2, 2.3]})])[0]
    assert reply.json()["label"] == "virginica"


def test_a_state_dict_brings_its_class_file_into_handlers(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = new_model(
        project, "iris-sd", "--kind", "tabular", "--weights", str(weights / "iris_state.pt"),
        "--module", f"{weights / 'nets.py'}:IrisNet", "--features", "4",
        "--labels", str(weights / "species.txt"),
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (project / "handlers" / "nets.py").read_text() == (weights / "nets.py").read_text()
    options = yaml.safe_load((project / "config" / "iris-sd.yml").read_text())["handler_options"]
    assert options["module"] == "handlers.nets:IrisNet"
    assert (project / "handlers" / "iris_sd.py").is_file()  # the module name of "iris-sd"


def test_custom_without_weights_echoes_and_serves(project: Path) -> None:
    assert new_model(project, "echo", "--kind", "custom") == 0
    with LocalModel.from_mar(project / "model_store" / "echo.mar") as served:
        reply = served.predict([Request.json({"inputs": [[1, 2], [3, 4]]})])[0]
    assert reply.json() == {"outputs": [[1.0, 2.0], [3.0, 4.0]]}


BAD_INPUTS = {
    "missing weights": (["--weights", "{w}/nowhere.pt", "--features", "4"], "no such file"),
    "not a model": (["--weights", "{w}/notes.txt", "--features", "4"], "not a TorchScript"),
    "named .pt2, bytes TorchScript": (
        ["--weights", "{w}/iris.pt2", "--features", "4"],
        "its bytes are a TorchScript file",
    ),
    "--format says export": (
        ["--weights", "{w}/iris.ts", "--format", "export", "--features", "4"],
        "its bytes are a TorchScript file",
    ),
    "state dict without its class": (
        ["--weights", "{w}/iris_state.pt", "--features", "4"],
        "--module",
    ),
    "a class for TorchScript": (
        ["--weights", "{w}/iris.ts", "--module", "{w}/nets.py:IrisNet", "--features", "4"],
        "--module and --module-args are for a state dict",
    ),
    "module that does not import": (
        ["--weights", "{w}/iris_state.pt", "--module", "{w}/broken.py:Net", "--features", "4"],
        "broken on purpose",
    ),
    "module not installed": (
        ["--weights", "{w}/iris_state.pt", "--module", "no_such_pkg.nets:Net", "--features", "4"],
        "cannot import no_such_pkg.nets",
    ),
    "module file missing": (
        ["--weights", "{w}/iris_state.pt", "--module", "{w}/gone.py:Net", "--features", "4"],
        "no such file",
    ),
    "class absent": (
        ["--weights", "{w}/iris_state.pt", "--module", "{w}/nets.py:Nope", "--features", "4"],
        "has no Nope",
    ),
    "weights that do not fit": (
        ["--weights", "{w}/iris_state.pt", "--module", "{w}/nets.py:DigitsNet", "--features", "4"],
        "does not fit handlers.nets:DigitsNet",
    ),
    "module args not JSON": (
        [
            "--weights",
            "{w}/iris_state.pt",
            "--module",
            "{w}/nets.py:IrisNet",
            "--module-args",
            "[1,",
            "--features",
            "4",
        ],
        "module_args",
    ),
    "no feature count": (["--weights", "{w}/iris.ts"], "--features is required"),
    "wrong feature count": (["--weights", "{w}/iris.ts", "--features", "5"], "size of tensor"),
    "labels that do not match": (
        ["--weights", "{w}/iris.ts", "--features", "4", "--labels", "{w}/four.txt"],
        "labels.json names 4",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_it_and_changes_nothing(
    project: Path, weights: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (weights / "iris.pt2").write_bytes((weights / "iris.ts").read_bytes())
    args, says = BAD_INPUTS[case]
    before = snapshot(project)
    code = new_model(project, "m", "--kind", "tabular", *(a.format(w=weights) for a in args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err, err
    assert snapshot(project) == before


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("bad name", "TorchServe refuses it"),
        (".dot", "TorchServe refuses it"),
        ("x" * 129, "at most 128"),
        ("1abc", "Python cannot import"),
        ("class", "Python cannot import"),
    ],
)
def test_a_name_torchserve_or_python_refuses_exits_2(
    project: Path, weights: Path, name: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project)
    code = new_model(
        project, name, "--kind", "tabular", "--weights", str(weights / "iris.ts"), "--features", "4"
    )
    assert code == 2
    assert says in capsys.readouterr().err
    assert snapshot(project) == before


def test_a_text_kind_needs_a_hugging_face_directory(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project)
    code = new_model(
        project, "t", "--kind", "text-embedding", "--weights", str(weights / "iris.ts")
    )
    assert code == 2
    assert "reads a Hugging Face model directory" in capsys.readouterr().err
    assert snapshot(project) == before


def test_an_export_with_a_fixed_batch_is_refused_with_the_fix(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(project)
    code = new_model(
        project, "d", "--kind", "image-classifier", "--weights", str(weights / "static.pt2"),
        "--image-size", "8", "--resize", "0", "--mode", "L",
    )  # fmt: skip
    assert code == 2
    assert "export it with a dynamic batch dimension" in capsys.readouterr().err
    assert snapshot(project) == before
    assert new_model(
        project, "d", "--kind", "image-classifier", "--weights", str(weights / "static.pt2"),
        "--image-size", "8", "--resize", "0", "--mode", "L", "--batch-size", "1",
    ) == 0  # fmt: skip


def test_existing_files_are_kept_unless_force(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["iris", "--kind", "tabular", "--weights", str(weights / "iris.ts"), "--features", "4"]
    assert new_model(project, *args) == 0
    handler = project / "handlers" / "iris.py"
    handler.write_text(handler.read_text() + "# my edit\n")
    before = snapshot(project)
    capsys.readouterr()
    assert new_model(project, *args) == 2
    assert "handlers/iris.py" in capsys.readouterr().err
    assert snapshot(project) == before
    assert new_model(project, *args, "--force") == 0
    assert "# my edit" not in handler.read_text()


def test_what_is_not_a_file_is_never_replaced_even_with_force(
    project: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["iris", "--kind", "tabular", "--weights", str(weights / "iris.ts"), "--features", "4"]
    (project / "tests" / "test_iris_e2e.py").mkdir()  # a directory where a file must go
    (project / "tests" / "test_iris_e2e.py" / "keep").write_text("x")
    (project / "models").mkdir()
    (project / "models" / "iris").write_text("a file where a directory must go")
    before = snapshot(project)
    assert new_model(project, *args, "--force") == 2
    err = capsys.readouterr().err
    assert "models/iris is a file where a directory must go" in err
    assert "tests/test_iris_e2e.py is not a regular file" in err
    assert snapshot(project) == before
    (project / "models" / "iris").unlink()
    (project / "tests" / "test_iris_e2e.py" / "keep").unlink()
    (project / "tests" / "test_iris_e2e.py").rmdir()
    (project / "elsewhere").mkdir()
    (project / "examples").rmdir() if (project / "examples").is_dir() else None
    (project / "examples").symlink_to(project / "elsewhere")
    before = snapshot(project)
    assert new_model(project, *args, "--force") == 2
    assert "examples is a link" in capsys.readouterr().err
    assert snapshot(project) == before and not list((project / "elsewhere").iterdir())


def test_a_failed_write_puts_everything_back(
    project: Path,
    weights: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["iris", "--kind", "tabular", "--weights", str(weights / "iris.ts"), "--features", "4"]
    assert new_model(project, *args) == 0
    (project / "handlers" / "iris.py").write_text("# the user's edit\n")
    before = snapshot(project)
    real, failed = os.replace, []

    def disk_full(source: Any, target: Any) -> None:  # once, into the project's tests/
        into_project = ".servekit-" not in str(target)
        if str(target).endswith("test_iris_e2e.py") and into_project and not failed:
            failed.append(target)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target)

    monkeypatch.setattr("servekit.scaffold.new_model.os.replace", disk_full)
    capsys.readouterr()
    assert new_model(project, *args, "--labels", str(weights / "species.txt"), "--force") == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert snapshot(project) == before


MORE_BAD_INPUTS = {
    "a name that shadows numpy": (["numpy", "--weights", "{w}/iris.ts"], "shadows a module"),
    "a name that shadows json": (["json", "--weights", "{w}/iris.ts"], "shadows a module"),
    "a name that shadows the handlers package": (
        ["handlers", "--weights", "{w}/iris.ts"],
        "shadows a module",
    ),
    "a module that exits at import": (
        ["m", "--weights", "{w}/iris_state.pt", "--module", "{w}/exits.py:Net"],
        "SystemExit",
    ),
    "a module file named __init__": (
        ["m", "--weights", "{w}/iris_state.pt", "--module", "{w}/pkg/__init__.py:IrisNet"],
        "copied to handlers/__init__.py",
    ),
    "a batch size the validator refuses": (
        ["m", "--weights", "{w}/iris.ts", "--batch-size", "0"],
        "its spec would not validate",
    ),
    "an option of another kind": (
        ["m", "--weights", "{w}/iris.ts", "--image-size", "8"],
        "--image-size: not options of --kind tabular",
    ),
    "a module that hangs at import": (
        [
            "m",
            "--weights",
            "{w}/iris_state.pt",
            "--module",
            "{w}/hangs.py:Net",
            "--check-timeout",
            "3",
        ],
        "was not loaded and served within 3 s",
    ),
}


@pytest.mark.parametrize("case", sorted(MORE_BAD_INPUTS))
def test_more_bad_input_found_by_review_exits_2(
    project: Path, weights: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (weights / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (weights / "hangs.py").write_text("import time\nwhile True:\n    time.sleep(0.1)\n")
    (weights / "pkg").mkdir(exist_ok=True)
    (weights / "pkg" / "__init__.py").write_text((weights / "nets.py").read_text())
    args, says = MORE_BAD_INPUTS[case]
    before = snapshot(project)
    code = new_model(
        project, *(a.format(w=weights) for a in args), "--kind", "tabular", "--features", "4"
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err, err
    assert snapshot(project) == before


def test_a_hugging_face_directory_without_a_tokenizer_is_refused(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by review: transformers then builds an empty vocabulary and every word is
    unknown, so any two sentences got the same embedding, with no error."""
    notok = tmp_path / "notok"
    notok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (notok / name).symlink_to(ROOT / "build" / "models" / "minilm" / name)
    before = snapshot(project)
    assert new_model(project, "m", "--kind", "text-embedding", "--weights", str(notok)) == 2
    assert "no tokenizer files" in capsys.readouterr().err
    assert snapshot(project) == before


def test_labels_are_read_from_json_lists_objects_and_lines(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes("\ufeffa\nb\n".encode())
    (tmp_path / "bom.json").write_bytes('\ufeff["a", "b"]'.encode())
    assert read_labels(tmp_path / "bom.txt") == read_labels(tmp_path / "bom.json") == ["a", "b"]
    given = {
        "list.json": '["a", "b"]',
        "object.json": '{"1": "b", "0": "a"}',
        "lines.txt": "a\n\n b \n",
    }
    for name, text in given.items():
        (tmp_path / name).write_text(text)
        assert read_labels(tmp_path / name) == ["a", "b"], name


@pytest.mark.parametrize("text", ["", "[]", '["a", "a"]', '{"0": "a", "2": "b"}', "[1, 2]"])
def test_bad_labels_are_refused(tmp_path: Path, text: str) -> None:
    from servekit.errors import ConfigError

    (tmp_path / "labels").write_text(text)
    with pytest.raises(ConfigError, match="--labels"):
        read_labels(tmp_path / "labels")


def test_the_handler_module_of_a_name() -> None:
    assert check_name("iris-v2.1") == "iris_v2_1"


@pytest.fixture(autouse=True)
def _no_stray_modules() -> Iterator[None]:
    """Handlers imported from archives are forgotten by the harness; check nothing leaks."""
    yield
    import sys

    assert not any(m.startswith("handlers.iris") for m in sys.modules)

"""Bring your own model, from an empty directory outside the repository: ``servekit init``, then
``servekit new-model`` for each weights format and kind (the digits CNN as TorchScript and as a
``torch.export`` program, the iris net as a state dict with its class in a file of its own and as
raw TorchScript for the custom kind, the packaged MiniLM directory, a MiniLM topic classifier),
``servekit archive``, one real TorchServe on the project's own config, and correct answers over
HTTP: held-out digits recognised, iris species right, MiniLM's reference cosine of 0.755, topics
of held-out sentences. The toolkit runs as its installed ``servekit`` command, in the project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from models.own_formats import OwnModel, all_models
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import customized, wait_ready

pytestmark = pytest.mark.e2e

SERVEKIT = str(Path(sys.executable).parent / "servekit")
DIGITS = 20  # held-out digits asked per digits model


def servekit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVEKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def own() -> Iterator[tuple[Path, list[OwnModel]]]:
    """A project made by ``servekit init`` in a temporary directory, with every own model added
    by ``servekit new-model`` and archived."""
    base = Path(tempfile.mkdtemp(prefix="own-"))  # short: the worker socket's path is capped
    try:
        project = base / "project"
        made = servekit("init", str(project), cwd=base)
        assert made.returncode == 0, made.stderr
        weights = base / "weights"
        weights.mkdir()
        models = all_models(weights, digits=DIGITS)
        for model in models:
            added = servekit(
                "new-model", model.name, "--kind", model.kind, *model.args, cwd=project
            )
            assert added.returncode == 0, f"{model.name}: {added.stderr}"
        archived = servekit("archive", cwd=project)
        assert archived.returncode == 0, archived.stderr
        yield project, models
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def served(own: tuple[Path, list[OwnModel]]) -> Iterator[TorchServe]:
    project, models = own
    workdir = Path(tempfile.mkdtemp(prefix="ts-"))
    try:
        with running(project / "config.properties", workdir) as server:
            wait_ready(server, [m.name for m in models], timeout=300)
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_project_validates_clean(own: tuple[Path, list[OwnModel]]) -> None:
    project, models = own
    checked = servekit("validate", cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 error(s), 0 warning(s)" in checked.stdout
    assert sorted(p.stem for p in (project / "model_store").glob("*.mar")) == sorted(
        m.name for m in models
    )


MODELS = ["digits_ts", "digits_pt2", "iris_sd", "iris_raw", "minilm_emb", "topics"]


@pytest.mark.parametrize("name", MODELS)
def test_every_held_out_case_is_answered_right_over_http(
    served: TorchServe, own: tuple[Path, list[OwnModel]], name: str
) -> None:
    model = next(m for m in own[1] if m.name == name)
    wrong = []
    for body, content_type, right in model.cases:
        reply = requests.post(
            f"{served.inference_url}/predictions/{name}",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        if not right(reply.json()):
            wrong.append((body[:80], reply.json()))
    # the digits CNN is 98.4 % right on the whole test split; these are the first 20 of it
    assert not wrong, f"{len(wrong)} of {len(model.cases)} wrong: {wrong[:3]}"


def test_the_metadata_shows_each_model_as_it_was_brought(served: TorchServe) -> None:
    formats = {
        "digits_ts": "torchscript",
        "digits_pt2": "export",
        "iris_sd": "state-dict",
        "iris_raw": "torchscript",
        "minilm_emb": "huggingface",
        "topics": "huggingface",
    }
    for name, fmt in formats.items():
        metadata = customized(served, name)
        assert metadata["status"] == "ready", name
        assert metadata["weights"]["format"] == fmt, name
        assert metadata["device"]["name"] == "cpu", name
    assert customized(served, "iris_sd")["weights"]["module"] == "handlers.irisnet:IrisNet"
    assert customized(served, "topics")["labels"] == ["animal", "vehicle", "food"]


def test_bad_requests_get_4xx_naming_the_problem(served: TorchServe) -> None:
    def post(model: str, body: bytes, content_type: str) -> requests.Response:
        return requests.post(
            f"{served.inference_url}/predictions/{model}",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )

    short = post("iris_sd", json.dumps({"features": [1.0, 2.0]}).encode(), "application/json")
    assert short.status_code == 400 and "list of 4 numbers" in short.json()["message"]
    shape = post("iris_raw", json.dumps({"inputs": [[1.0] * 4]}).encode(), "application/json")
    assert shape.status_code == 400 and "expected [4]" in shape.json()["message"]
    not_image = post("digits_pt2", b"%PDF-1.4 not an image", "application/octet-stream")
    assert not_image.status_code == 415
    empty = post("topics", json.dumps({"inputs": "  "}).encode(), "application/json")
    assert empty.status_code == 400 and "empty" in empty.json()["message"]


def test_the_generated_tests_pass_in_the_project(own: tuple[Path, list[OwnModel]]) -> None:
    """What `make test` runs in the project: the tests new-model wrote, in-process ones here
    (the end-to-end ones start a server each, the path of the tests above), for a model of
    each template branch: image (415 for a bad body), tabular, custom (JSON, 400). The text
    kinds' tests are the same template as tabular's and load MiniLM twice more: left out."""
    project, _ = own
    ran = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not e2e"),
            *("-k", "digits_pt2 or iris_sd or iris_raw"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert "9 passed" in ran.stdout  # three tests of each of the three models


def test_bad_input_to_the_installed_command_exits_2_and_leaves_the_project_alone(
    own: tuple[Path, list[OwnModel]], tmp_path: Path
) -> None:
    project, _ = own
    lying = tmp_path / "model.pt2"
    lying.write_bytes(b"PK\x03\x04 not really a zip")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package_anywhere\n")
    state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state)
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    module = ["--module", f"{broken}:Net"]
    cases = [
        ("bad", ["--weights", str(lying)], "is said to be a torch.export program"),
        ("bad", ["--weights", str(state), *module], "No module named 'no_such_package_any"),
        ("bad model", ["--weights", str(state), *module], "TorchServe refuses it"),
    ]
    for name, args, says in cases:
        ran = servekit(
            "new-model", name, "--kind", "tabular", "--features", "2", *args, cwd=project
        )
        assert ran.returncode == 2, ran.stderr
        assert says in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before

"""The example handlers on CUDA answer as they do on CPU (``make test-gpu``; skipped where torch
sees no GPU, ``tests/conftest.py``).

Each model is loaded twice through TorchServe's worker code, without and with a ``gpu_id`` (as
the frontend assigns one), and asked the same batches: the GPU worker must say it is on the
GPU, hold its weights there, and give the CPU answers within float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models import own_formats
from models.own_formats import OwnModel
from servekit.cli import main as servekit
from servekit.datasets import digit_png, digits_split, iris_split
from servekit.serve.harness import LocalModel, Reply, Request
from tests.unit.test_batch_contract import model_dir
from tests.unit.test_devices import GREEDY, PLAIN
from tests.unit.test_embedding import SENTENCES
from tests.unit.test_imagenet import jpeg

pytestmark = pytest.mark.gpu


def last_gpu() -> int:
    """The highest device index: with several GPUs, proves gpu_id is honoured, not cuda:0."""
    return torch.cuda.device_count() - 1


def iris_requests() -> list[Request]:
    rows = iris_split().x_test[:7].tolist()
    return [Request.json({"features": row}) for row in rows] + [Request.json({"features": [1]})]


def digits_requests() -> list[Request]:
    images = digits_split().x_test[:8]
    return [Request.raw(digit_png(image), "image/png") for image in images]


def minilm_requests() -> list[Request]:
    return [Request.json(s) for s in SENTENCES[:5]] + [
        Request.json(SENTENCES[5:]),
        Request.json(""),
    ]


def efficientnet_requests() -> list[Request]:
    return [jpeg("china.jpg"), jpeg("flower.jpg"), Request.raw(b"no image", "image/png")]


def empty_requests() -> list[Request]:
    return [Request.raw(b"abc"), Request.raw(b"")]


# archive name -> (the batch it is asked, tolerance on each float of the answers)
EXAMPLES: dict[str, tuple[Callable[[], list[Request]], float]] = {
    "iris": (iris_requests, 1e-4),
    "digits": (digits_requests, 1e-4),
    "minilm": (minilm_requests, 1e-4),
    "efficientnet": (efficientnet_requests, 5e-3),  # cuDNN convolutions run in TF32
    "empty_model": (empty_requests, 0.0),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_handlers_on_cuda_answer_as_on_cpu(model_store: Path, name: str) -> None:
    requests, tolerance = EXAMPLES[name]
    mar = model_store / f"{name}.mar"
    with LocalModel.from_mar(mar) as cpu:
        assert cpu.describe()["device"]["name"] == "cpu"
        want = cpu.predict(requests())
    gpu_id = last_gpu()
    with LocalModel.from_mar(mar, gpu_id=gpu_id) as gpu:
        described = gpu.describe()
        assert_on_device(gpu, torch.device("cuda", gpu_id))
        got = gpu.predict(requests())
    assert described["device"] == {
        "name": f"cuda:{gpu_id}",
        "reason": f"cuda:{gpu_id} (gpu_id {gpu_id} from TorchServe)",
    }
    assert_same_replies(got, want, tolerance)


def test_a_test_handler_runs_its_module_on_cuda(tmp_path: Path) -> None:
    gpu_id = last_gpu()
    with LocalModel(model_dir(tmp_path, "plain", PLAIN), batch_size=4, gpu_id=gpu_id) as model:
        assert_on_device(model, torch.device("cuda", gpu_id))
        replies = model.predict([Request.json(v) for v in (0.5, 1.0, "x", 4.0)])
    assert [r.status for r in replies] == [200, 200, 400, 200]
    assert [replies[i].json() for i in (0, 1, 3)] == [1.0, 2.0, 8.0]


REAL_OOM = """
import torch
from servekit.runtime.base import ToolkitHandler

class RealOom(ToolkitHandler):
    def load_model(self):
        return torch.nn.Identity()

    def parse_request(self, payload):
        return payload.json()

    def preprocess(self, items):
        return torch.tensor([0.0 if x == "poison" else float(x) for x in items])

    def inference(self, batch):
        if bool((batch == 0).any()):
            torch.empty(1 << 50, device=batch.device)  # 4 PiB: a real CUDA out-of-memory
        return batch * 2

    def postprocess(self, outputs):
        return outputs.tolist()
"""


def test_a_real_cuda_out_of_memory_fails_only_its_request(tmp_path: Path) -> None:
    with LocalModel(model_dir(tmp_path, "oom", REAL_OOM), batch_size=4, gpu_id=0) as model:
        replies = model.predict([Request.json(v) for v in (1, "poison", 3, 4)])
        assert [r.status for r in replies] == [200, 507, 200, 200]
        assert [replies[i].json() for i in (0, 2, 3)] == [2.0, 6.0, 8.0]
        assert model.describe()["status"] == "ready"


@pytest.fixture()
def greedy_on_cuda(tmp_path: Path) -> Iterator[LocalModel]:
    (tmp_path / "fits").write_text("2")
    source = GREEDY.format(error="torch.OutOfMemoryError")
    with LocalModel(model_dir(tmp_path, "greedy", source), batch_size=8, gpu_id=0) as model:
        model.describe()
        yield model


def test_out_of_memory_halving_on_cuda(greedy_on_cuda: LocalModel) -> None:
    replies = greedy_on_cuda.predict([Request.json(v) for v in [0, 1, 2, 3, 4, "poison", 6, 7]])
    assert [r.status for r in replies] == [200] * 5 + [507] + [200] * 2
    assert greedy_on_cuda.describe()["calls"] == [8, 4, 2, 2, 4, 2, 1, 1, 2]


# ----- a generated model on CUDA ---------------------------------------------------------------
OWN: dict[str, Callable[[Path], OwnModel]] = {
    "torchscript": lambda out: own_formats.digits_torchscript(out, 8),
    "export": lambda out: own_formats.digits_export(out, 8),
    "state-dict": own_formats.iris_state_dict,
    "custom": own_formats.iris_custom,
    "huggingface": lambda out: own_formats.minilm_embedding(),
}


@pytest.mark.parametrize("fmt", sorted(OWN))
def test_a_generated_model_on_cuda_answers_as_on_cpu(tmp_path: Path, fmt: str) -> None:
    """`servekit init` and `servekit new-model` (which checks the model on CPU), then the
    archive it made loaded with a gpu_id: on the GPU, the CPU's answers to its held-out cases."""
    project = tmp_path / "project"
    assert servekit(["init", str(project)]) == 0
    weights = tmp_path / "weights"
    weights.mkdir()
    own = OWN[fmt](weights)
    made = servekit(
        ["new-model", own.name, "--kind", own.kind, *own.args, "--project", str(project)]
    )
    assert made == 0
    mar = project / "model_store" / f"{own.name}.mar"
    requests = [Request.raw(body, content_type) for body, content_type, _ in own.cases]
    with LocalModel.from_mar(mar) as cpu:
        want = cpu.predict(requests)
    gpu_id = last_gpu()
    with LocalModel.from_mar(mar, gpu_id=gpu_id) as gpu:
        assert_on_device(gpu, torch.device("cuda", gpu_id))
        got = gpu.predict(requests)
    assert_same_replies(got, want, 1e-4)
    assert all(right(reply.json()) for reply, (_, _, right) in zip(got, own.cases, strict=True))


# ----- helpers ---------------------------------------------------------------------------------
def assert_on_device(model: LocalModel, device: torch.device) -> None:
    """The handler's module, if it has one, holds every parameter and buffer on ``device``."""
    handler: Any = model.service._entry_point.__self__
    assert handler.device == device
    if isinstance(handler.model, torch.nn.Module):
        tensors = [*handler.model.parameters(), *handler.model.buffers()]
        assert {t.device for t in tensors} <= {device}


def assert_same_replies(got: list[Reply], want: list[Reply], tolerance: float) -> None:
    assert [r.status for r in got] == [r.status for r in want]
    for mine, theirs in zip(got, want, strict=True):
        assert close(mine.json(), theirs.json(), tolerance), (mine.json(), theirs.json())


def close(got: Any, want: Any, tolerance: float) -> bool:
    """Equal but for floats within ``tolerance``; a ranked top-k may swap its near-ties."""
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(close(got[k], want[k], tolerance) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        if want and all(isinstance(e, dict) and "probability" in e for e in want + got):
            return same_ranking(got, want, tolerance)
        return len(got) == len(want) and all(
            close(g, w, tolerance) for g, w in zip(got, want, strict=True)
        )
    if isinstance(want, float) and isinstance(got, (int, float)):
        return abs(got - want) <= tolerance
    return bool(got == want)


def same_ranking(got: list[dict[str, Any]], want: list[dict[str, Any]], tolerance: float) -> bool:
    """Same best entry; the others (by what they name) with close probabilities, allowing the
    last place to differ when two probabilities are within the tolerance."""

    def key(entry: dict[str, Any]) -> str:
        return repr(sorted((k, v) for k, v in entry.items() if k != "probability"))

    mine = {key(e): e["probability"] for e in got}
    theirs = {key(e): e["probability"] for e in want}
    shared = mine.keys() & theirs.keys()
    return (
        len(got) == len(want)
        and key(got[0]) == key(want[0])
        and len(shared) >= len(want) - 1
        and all(abs(mine[k] - theirs[k]) <= tolerance for k in shared)
    )

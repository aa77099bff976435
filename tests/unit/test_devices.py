"""Where a worker runs (``servekit.runtime.devices``) and what running out of memory does to a
batch: halves, recursively, until only the request that fails alone gets its 507."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from servekit.runtime.devices import choose_device, to_device
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.text_batching import LengthGroups, TextInput
from servekit.serve.harness import LocalModel, ModelLoadFailed, Request
from tests.unit.test_batch_contract import model_dir

META = torch.device("meta")  # a device every CPU machine has: moves without a GPU

# ----- the device choice -----------------------------------------------------------------------
# (gpu_id, model config, torch sees CUDA, device count) -> the reason, which names the device
CHOICES = [
    (None, {}, False, 0, "cpu (no GPU assigned: gpu_id is None)"),
    (None, {}, True, 2, "cpu (no GPU assigned: gpu_id is None)"),  # number_of_gpu=0: not cuda:None
    (0, {}, True, 1, "cuda:0 (gpu_id 0 from TorchServe)"),
    (1, {}, True, 2, "cuda:1 (gpu_id 1 from TorchServe)"),
    (1, {"deviceType": "gpu"}, True, 2, "cuda:1 (gpu_id 1 from TorchServe, deviceType: gpu)"),
    (1, {"deviceType": "GPU"}, True, 2, "cuda:1 (gpu_id 1 from TorchServe, deviceType: gpu)"),
    (None, {"deviceType": "cpu"}, True, 2, "cpu (deviceType: cpu)"),
    (0, {"deviceType": "cpu"}, True, 2, "cpu (deviceType: cpu)"),
    (None, {"deviceType": "cpu"}, False, 0, "cpu (deviceType: cpu)"),
    (3, {"deviceIds": [1, 3]}, True, 4, "cuda:3 (gpu_id 3 from TorchServe)"),
    (0, {"deviceIds": [2, 3], "parallelLevel": 2}, True, 4, "cuda:0 (gpu_id 0 from TorchServe)"),
    (None, {"deviceIds": [7]}, True, 1, "cpu (no GPU assigned: gpu_id is None)"),
    (0, {"deviceType": ""}, True, 1, "cuda:0 (gpu_id 0 from TorchServe)"),
]  # fmt: skip


@pytest.mark.parametrize(("gpu_id", "config", "cuda", "count", "reason"), CHOICES)
def test_the_device_follows_what_torchserve_assigned(
    gpu_id: int | None, config: dict[str, Any], cuda: bool, count: int, reason: str
) -> None:
    choice = choose_device({"gpu_id": gpu_id}, config, cuda_available=cuda, device_count=count)
    assert (str(choice.device), choice.reason, choice.fallback) == (
        reason.split()[0],
        reason,
        False,
    )


def test_no_gpu_id_at_all_is_cpu_as_before() -> None:
    choice = choose_device({"model_dir": "."}, {}, cuda_available=True, device_count=1)
    assert str(choice.device) == "cpu"


def test_a_gpu_id_torch_cannot_use_is_cpu_loudly() -> None:
    choice = choose_device({"gpu_id": 0}, {}, cuda_available=False, device_count=0)
    assert (choice.device, choice.fallback) == (torch.device("cpu"), True)
    assert choice.reason == (
        "cpu (gpu_id 0 from TorchServe, but torch sees no CUDA device: "
        "a CPU-only torch build, or no driver)"
    )


# (gpu_id, model config, torch sees CUDA, device count) -> what the ModelLoadError says
REFUSED = [
    (None, {"deviceType": "gpu"}, True, 2, "deviceType: gpu, but TorchServe assigned this"),
    (None, {"deviceType": "gpu"}, False, 0, "gpu_id is None: number_of_gpu is 0"),
    (0, {"deviceType": "gpu"}, False, 0, "assigned gpu_id 0, but torch sees no CUDA device"),
    (2, {}, True, 2, "assigned gpu_id 2, but torch sees 2 CUDA device(s) (cuda:0..cuda:1)"),
    (4, {"deviceType": "gpu"}, True, 1, "assigned gpu_id 4, but torch sees 1 CUDA device(s)"),
    (0, {"deviceIds": [1, 5]}, True, 2, "gpu_id 0, which is not in deviceIds [1, 5]: the frontend"),
    (0, {"deviceIds": [1, 5]}, True, 2, "holding an id outside 0..1 (here [5]) and spreads"),
    (0, {"deviceIds": [1]}, True, 2, "not in deviceIds [1]: the frontend and this worker disagree"),
    (0, {"deviceIds": "0,1"}, True, 2, "deviceIds is '0,1'; expected a list of GPU ids"),
    (0, {"deviceType": "cuda"}, True, 1, "deviceType is 'cuda'; expected 'cpu' or 'gpu'"),
    (0, {"deviceType": "gpus"}, True, 1, "did you mean 'gpu'?"),
    ("0", {}, True, 1, "system property gpu_id is '0'; expected an int >= 0 or None"),
    (-1, {}, True, 1, "gpu_id is -1"),
]  # fmt: skip


@pytest.mark.parametrize(("gpu_id", "config", "cuda", "count", "fragment"), REFUSED)
def test_a_device_that_cannot_be_honoured_fails_the_load_saying_why(
    gpu_id: Any, config: dict[str, Any], cuda: bool, count: int, fragment: str
) -> None:
    with pytest.raises(ModelLoadError) as raised:
        choose_device({"gpu_id": gpu_id}, config, cuda_available=cuda, device_count=count)
    assert fragment in str(raised.value)


# ----- moving data -----------------------------------------------------------------------------
class Pair(NamedTuple):
    x: torch.Tensor
    label: str


class Movable:
    def __init__(self) -> None:
        self.moved_to: torch.device | None = None

    def to(self, device: torch.device) -> Movable:
        self.moved_to = device
        return self


def test_to_device_moves_tensors_in_nested_containers() -> None:
    movable = Movable()
    batch = {"a": [torch.ones(2), (torch.zeros(1), 3)], "p": Pair(torch.ones(1), "x"), "m": movable}
    moved = to_device(batch, META)
    assert moved["a"][0].device == META and moved["a"][1][0].device == META
    assert moved["a"][1][1] == 3 and isinstance(moved["a"][1], tuple)
    assert isinstance(moved["p"], Pair) and moved["p"].x.device == META and moved["p"].label == "x"
    assert moved["m"] is movable and movable.moved_to == META
    assert batch["a"][0].device == torch.device("cpu")  # the original is left as it was


def test_to_device_on_cpu_returns_the_same_objects() -> None:
    cpu = torch.device("cpu")
    batch = [torch.ones(2), {"k": (torch.zeros(1), "s")}, 7, None, b"raw", "text"]
    assert to_device(batch, cpu) is batch
    ordered = OrderedDict(a=torch.ones(1))
    assert to_device(ordered, cpu) is ordered
    moved = to_device(ordered, META)
    assert type(moved) is OrderedDict and moved["a"].device == META


def test_length_groups_move_whole_and_split_back_on_their_device() -> None:
    inputs = [TextInput([[101, 7, 102]], single=True), TextInput([[101, 102]], single=True)]
    groups = LengthGroups.build(inputs, group_size=1, pad_id=0)
    assert groups.to(torch.device("cpu")) is groups
    on_meta = groups.to(META)
    assert [ids.device for ids, _ in on_meta.groups] == [META, META]
    assert (on_meta.order, on_meta.inputs) == (groups.order, groups.inputs)
    assert to_device(groups, META).groups[0][1].device == META
    rows = [rows for _, rows in groups.per_request(torch.tensor([[1.0], [2.0]]))]
    assert [r.tolist() for r in rows] == [[[1.0]], [[2.0]]]


# ----- the handler's device --------------------------------------------------------------------
PLAIN = """
import torch
from servekit.runtime.base import ToolkitHandler

class Plain(ToolkitHandler):
    def load_model(self):
        double = torch.nn.Linear(1, 1)
        torch.nn.init.constant_(double.weight, 2.0)
        torch.nn.init.zeros_(double.bias)
        return double

    def parse_request(self, payload):
        return float(payload.json())

    def preprocess(self, items):
        return torch.tensor(items).unsqueeze(1)

    def postprocess(self, outputs):
        return outputs.squeeze(1).tolist()
"""


@pytest.fixture()
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch sees no CUDA, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def with_model_config(directory: Path, lines: str) -> Path:
    config = directory / "model-config.yml"
    config.write_text(config.read_text() + lines)
    return directory


def test_describe_shows_the_device_and_why(tmp_path: Path, no_cuda: None) -> None:
    with LocalModel(model_dir(tmp_path, "plain", PLAIN)) as model:
        assert model.describe()["device"] == {
            "name": "cpu",
            "reason": "cpu (no GPU assigned: gpu_id is None)",
        }
        assert model.predict([Request.json(1.5)])[0].json() == 3.0


def test_a_gpu_id_on_a_machine_without_cuda_serves_on_cpu_and_says_so(
    tmp_path: Path, no_cuda: None, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalModel(model_dir(tmp_path, "plain", PLAIN), gpu_id=0) as model:
        described = model.describe()
        assert model.predict([Request.json(2.0)])[0].json() == 4.0
    assert described["device"]["name"] == "cpu"
    assert "gpu_id 0 from TorchServe, but torch sees no CUDA" in described["device"]["reason"]
    assert any("serving on cpu (gpu_id 0" in r.getMessage() for r in caplog.records)


def test_device_type_gpu_without_a_gpu_fails_initialize(tmp_path: Path, no_cuda: None) -> None:
    directory = with_model_config(model_dir(tmp_path, "plain", PLAIN), "deviceType: gpu\n")
    with pytest.raises(ModelLoadFailed, match="deviceType: gpu, but TorchServe assigned"):
        LocalModel(directory)


def test_device_type_cpu_ignores_a_gpu_id(tmp_path: Path) -> None:
    directory = with_model_config(model_dir(tmp_path, "plain", PLAIN), "deviceType: cpu\n")
    with LocalModel(directory, gpu_id=0) as model:
        assert model.describe()["device"] == {"name": "cpu", "reason": "cpu (deviceType: cpu)"}


ON_META = """
import torch
from servekit.runtime.base import ToolkitHandler

class OnMeta(ToolkitHandler):
    def load_model(self):
        self.device = torch.device("meta")  # stands in for a GPU on a CPU-only machine
        return torch.nn.Linear(1, 1)

    def parse_request(self, payload):
        return float(payload.json())

    def preprocess(self, items):
        return {"x": torch.tensor(items), "n": len(items)}

    def inference(self, batch):
        where = [str(batch["x"].device), str(self.model.weight.device)]
        return [where] * batch["n"]
"""


def test_the_model_and_each_batch_go_to_the_device(tmp_path: Path) -> None:
    with LocalModel(model_dir(tmp_path, "on_meta", ON_META), batch_size=2) as model:
        replies = model.predict([Request.json(1.0), Request.json(2.0)])
    assert [r.json() for r in replies] == [["meta", "meta"]] * 2


# ----- out of memory ---------------------------------------------------------------------------
GREEDY = """
import torch
from servekit.runtime.base import ToolkitHandler

class Greedy(ToolkitHandler):
    \"\"\"Runs out of memory on more than `fits` items, and on "poison" even alone.\"\"\"

    def __init__(self):
        super().__init__()
        self.calls = []

    def parse_request(self, payload):
        return payload.json()

    def inference(self, batch):
        self.calls.append(len(batch))
        fits = int((self.model_dir / "fits").read_text())
        if len(batch) > fits or "poison" in batch:
            raise {error}("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 2 for x in batch]

    def warmup_items(self, n):
        return [1] * n

    def describe_handle(self):
        calls, self.calls = self.calls, []
        return {{**super().describe_handle(), "calls": calls}}
"""


@pytest.fixture(params=["torch.OutOfMemoryError", "MemoryError"])
def greedy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalModel]:
    source = GREEDY.format(error=request.param)
    (tmp_path / "fits").write_text("2")
    with LocalModel(model_dir(tmp_path, "greedy", source), batch_size=8) as model:
        model.describe()  # forget the warmup's call
        yield model


def test_out_of_memory_splits_the_batch_in_halves_until_only_the_culprit_fails(
    greedy: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    values: list[Any] = [0, 1, 2, 3, 4, "poison", 6, 7]
    with caplog.at_level(logging.WARNING):
        replies = greedy.predict([Request.json(v) for v in values])
    assert [r.status for r in replies] == [200] * 5 + [507] + [200] * 2
    assert [r.json() for i, r in enumerate(replies) if i != 5] == [0, 2, 4, 6, 8, 12, 14]
    body = replies[5].json()
    assert body.pop("request_id")  # the frontend's id (servekit.runtime.request_ids)
    assert body == {
        "code": 507,
        "type": "InsufficientMemory",
        "message": "Out of memory on this request alone (its batch was split until it ran by "
        "itself); send a smaller input, or see the server log.",
    }
    assert "CUDA" not in replies[5].body.decode()
    described = greedy.describe()
    # 8 -> 4 + 4; 0..3 -> 2 + 2 (both fit); 4..7 -> [4, poison] -> 1 + 1, and [6, 7] fits
    assert described["calls"] == [8, 4, 2, 2, 4, 2, 1, 1, 2]
    splits = [r.getMessage() for r in caplog.records if "retrying it in halves" in r.getMessage()]
    assert [s.split("batch of ")[1].split(" ")[0] for s in splits] == ["8", "4", "4", "2"]
    assert described["status"] == "ready"  # its own inputs still fit: the worker serves on


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_out_of_memory_without_a_culprit_answers_every_request(
    greedy: LocalModel, size: int
) -> None:
    replies = greedy.predict([Request.json(v) for v in range(size)])
    assert [(r.status, r.json()) for r in replies] == [(200, 2 * v) for v in range(size)]
    calls = greedy.describe()["calls"]
    assert sum(n for n in calls if n <= 2) == size  # every item ran once in a batch that fit


def test_a_batch_of_poison_fails_each_request_alone_and_the_worker_serves_on(
    greedy: LocalModel,
) -> None:
    assert [r.status for r in greedy.predict([Request.json("poison")] * 3)] == [507] * 3
    assert greedy.describe()["calls"] == [3, 2, 1, 1, 1]
    assert [r.status for r in greedy.predict([Request.json(1), Request.json(2)])] == [200, 200]
    assert greedy.describe()["status"] == "ready"

"""The base handler's promises that no client can break: one answer per request, the
describe path only for TorchServe's own describe, 4xx for whatever the input causes, and a
readiness that client input cannot move (``servekit.runtime.readiness``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit.serve.harness import LocalModel, Request

MOODY = """
import torch
from pathlib import Path
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.errors import BadRequest

class Moody(ToolkitHandler):
    def parse_request(self, payload):
        value = payload.json()
        if value == "deep":
            raise RecursionError("maximum recursion depth exceeded")
        if value == "digits":
            return int("9" * 5000)  # ValueError: exceeds the int string conversion limit
        if not isinstance(value, int):
            raise BadRequest("send an integer")
        return value

    def inference(self, batch):
        if (self.model_dir / "broken").exists():
            raise RuntimeError("weights unreadable")
        if 13 in batch:
            raise RuntimeError("this input upsets the model")
        if 99 in batch:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [x * 2 for x in batch]

    def warmup_items(self, n):
        return [1] * n
"""


def model_dir(directory: Path, name: str, source: str, handler_options: str = "") -> Path:
    """An unpacked archive of one handler file and its ``handler:`` options (YAML lines)."""
    (directory / f"{name}.py").write_text(source)
    (directory / "MAR-INF").mkdir()
    (directory / "MAR-INF" / "MANIFEST.json").write_text(
        f'{{"model": {{"modelName": "{name}", "modelVersion": "1", "handler": "{name}.py",'
        ' "configFile": "model-config.yml"}}'
    )
    options = "".join(f"\n  {line}" for line in handler_options.split(";") if line)
    (directory / "model-config.yml").write_text(f"handler:{options or ' {}'}\n")
    return directory


@pytest.fixture()
def moody(tmp_path: Path) -> Iterator[LocalModel]:
    options = "degraded_after_errors: 2;recheck_seconds: 0"
    with LocalModel(model_dir(tmp_path, "moody", MOODY, options), batch_size=4) as model:
        yield model


def with_headers(value: object, headers: tuple[tuple[str, str], ...]) -> Request:
    plain = Request.json(value)
    return Request(plain.parameters, plain.headers + headers)


def statuses(model: LocalModel, *values: object) -> list[int]:
    return [r.status for r in model.predict([Request.json(v) for v in values])]


# ----- the describe header ---------------------------------------------------------------------
def test_a_describe_header_on_predictions_keeps_one_answer_per_request(moody: LocalModel) -> None:
    replies = moody.predict([with_headers(v, (("describe", "True"),)) for v in (1, 2, 3)])
    assert [(r.status, r.json()) for r in replies] == [(200, 2), (200, 4), (200, 6)]


def test_a_describe_header_alone_with_a_body_is_a_prediction(moody: LocalModel) -> None:
    reply = moody.predict([with_headers(5, (("describe", "True"),))])[0]
    assert (reply.status, reply.json()) == (200, 10)


def test_an_empty_form_with_a_describe_header_is_not_a_describe(moody: LocalModel) -> None:
    form = Request((), (("describe", "True"), ("Content-Type", "multipart/form-data; b=x")))
    reply = moody.predict([form])[0]
    assert reply.status == 400 and "status" not in reply.json()


def test_the_frontends_describe_gets_the_metadata(moody: LocalModel) -> None:
    described = moody.describe()
    assert described["status"] == "ready"
    assert described["self_test"] == {"failing": None, "self_tests": 0, "recheck_seconds": 0.0}


# ----- what the input causes is a 4xx ----------------------------------------------------------
@pytest.mark.parametrize("value", ["deep", "digits"])
def test_an_unexpected_error_while_parsing_is_the_inputs_fault(
    moody: LocalModel, value: str
) -> None:
    replies = moody.predict([Request.json(value), Request.json(4)])
    assert [r.status for r in replies] == [400, 200]
    assert "could not be read" in replies[0].json()["message"]
    assert moody.describe()["failures_in_a_row"] == 0


def test_out_of_memory_is_507_with_a_generic_message(moody: LocalModel) -> None:
    replies = moody.predict([Request.json(99), Request.json(4)])
    assert [r.status for r in replies] == [507, 200]
    assert "CUDA" not in replies[0].body.decode()


# ----- readiness -------------------------------------------------------------------------------
def test_inputs_that_make_the_model_fail_do_not_make_it_degraded(moody: LocalModel) -> None:
    for _ in range(5):
        assert statuses(moody, 13, 13, 13, 13) == [500] * 4
    described = moody.describe()
    assert described["status"] == "ready"
    assert described["self_test"]["self_tests"] >= 1  # the question was asked, and answered


def test_a_broken_model_is_degraded_and_recovers_without_traffic(moody: LocalModel) -> None:
    broken = moody.model_dir / "broken"
    broken.touch()
    assert statuses(moody, 1, 2) == [500, 500]
    described = moody.describe()
    assert described["status"] == "degraded"
    assert described["self_test"]["failing"] == "RuntimeError on the handler's own warmup inputs"
    assert statuses(moody, 3) == [500]
    broken.unlink()
    assert moody.describe()["status"] == "ready"  # the describe itself re-ran the self-test


def test_a_client_success_does_not_mark_a_broken_model_ready(tmp_path: Path) -> None:
    options = "degraded_after_errors: 1;recheck_seconds: 3600"
    with LocalModel(model_dir(tmp_path, "moody", MOODY, options), batch_size=4) as model:
        (tmp_path / "broken").touch()
        assert statuses(model, 1) == [500]
        (tmp_path / "broken").unlink()
        assert statuses(model, 2) == [200]
        assert model.describe()["status"] == "degraded"  # only the self-test says ready


WARMUPLESS = """
from servekit.runtime.base import ToolkitHandler

class Warmupless(ToolkitHandler):
    def parse_request(self, payload):
        return payload.json()

    def preprocess(self, items):
        if not items:
            raise ValueError("an empty batch")
        return items

    def inference(self, batch):
        if 13 in batch:
            raise RuntimeError("this input upsets the model")
        return batch
"""


def test_a_handler_without_warmup_items_is_never_degraded_by_errors(tmp_path: Path) -> None:
    options = "degraded_after_errors: 1;recheck_seconds: 0"
    with LocalModel(model_dir(tmp_path, "warmupless", WARMUPLESS, options), batch_size=4) as model:
        assert statuses(model, 13, 13) == [500, 500]
        described = model.describe()
    assert described["status"] == "ready"  # no known-good input to ask: it cannot tell
    assert described["self_test"]["failing"] is None


# ----- an answer is always valid JSON ----------------------------------------------------------
NAN = """
from servekit.runtime.base import ToolkitHandler

class Nan(ToolkitHandler):
    def parse_request(self, payload):
        return payload.json()

    def inference(self, batch):
        return [float(x) if x in ("nan", "inf") else x for x in batch]
"""


def test_a_non_json_result_is_an_internal_error_for_that_request_only(tmp_path: Path) -> None:
    with LocalModel(model_dir(tmp_path, "nan", NAN), batch_size=4) as model:
        replies = model.predict([Request.json(v) for v in ("nan", 1.5, "inf", [2])])
    assert [r.status for r in replies] == [500, 200, 500, 200]
    assert [replies[1].json(), replies[3].json()] == [1.5, [2]]
    assert replies[0].json()["message"].startswith("Internal error while serving")


# ----- a batch's work budget -------------------------------------------------------------------
COSTLY = """
from servekit.runtime.base import ToolkitHandler

class Costly(ToolkitHandler):
    cost_unit = "units"

    def parse_request(self, payload):
        return payload.json()

    def item_cost(self, item):
        return item

    def inference(self, batch):
        return batch

    def warmup_items(self, n):
        return [1] * n
"""


def test_requests_past_the_batch_budget_get_503_and_one_over_it_alone_413(tmp_path: Path) -> None:
    options = "max_batch_cost: 10;degraded_after_errors: 1"
    with LocalModel(model_dir(tmp_path, "costly", COSTLY, options), batch_size=8) as model:
        replies = model.predict([Request.json(v) for v in (3, 4, 11, 5, 2)])
        described = model.describe()
    assert [r.status for r in replies] == [200, 200, 413, 503, 200]
    assert [replies[i].json() for i in (0, 1, 4)] == [3, 4, 2]
    assert "asks for 11 units; one batch may hold 10" in replies[2].json()["message"]
    assert "budget of 10 units is spent; retry" in replies[3].json()["message"]
    assert replies[3].headers.get("Retry-After") == "1"
    assert described["failures_in_a_row"] == 0 and described["self_test"]["self_tests"] == 0

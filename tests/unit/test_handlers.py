"""Every handler, in-process through TorchServe's worker code (servekit.serve.harness)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from servekit.datasets import digit_png, digits_split, iris_split
from servekit.serve.harness import LocalModel, ModelLoadFailed, Reply, Request
from servekit.serve.settings import archived_setting
from tests.conftest import ROOT

BATCH_SIZES = [1, 2, 5, 8]
# Batches as patterns: g = good request, b = bad request.
MIXES = ["b", "gb", "bg", "gbg", "bbgg", "gbgbgbgb", "bbbbbbbb"]


@pytest.fixture(scope="module")
def iris(model_store: Path) -> Iterator[LocalModel]:
    with LocalModel.from_mar(model_store / "iris.mar") as model:
        yield model


@pytest.fixture(scope="module")
def digits(model_store: Path) -> Iterator[LocalModel]:
    with LocalModel.from_mar(model_store / "digits.mar") as model:
        yield model


def unpack(mar: Path, dest: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


def assert_error(reply: Reply, status: int, fragment: str) -> None:
    assert reply.status == status, reply.body
    assert reply.content_type == "application/json"
    body = reply.json()
    assert body["code"] == status
    assert fragment in body["message"], body["message"]


# ----- iris ------------------------------------------------------------------------------------
IRIS_BAD = [
    (Request.raw(b'{"features": [1, 2', "application/json"), 400, "not valid JSON"),
    (Request.json({"features": [1, 2, 3]}), 400, "list of 4 numbers; got a list of 3"),
    (Request.json({"features": [1, "x", 3, 4]}), 400, "feature 1 (sepal_width) is 'x'"),
    (Request.json({"features": [1, 2, 3, -4]}), 400, "feature 3 (petal_width) is -4"),
    (Request.json({"colour": "blue"}), 400, "got keys: colour"),
    (Request.json("five"), 400, "got str"),
    (Request.raw(b"", "application/json"), 400, "request body is empty"),
    (Request.json({"features": [1, True, 3, 4]}), 400, "feature 1 (sepal_width) is True"),
]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_iris_batches_of_good_requests(iris: LocalModel, size: int) -> None:
    split = iris_split()
    replies = iris.predict([Request.json({"features": x.tolist()}) for x in split.x_test[:size]])
    assert [r.status for r in replies] == [200] * size
    labels = [r.json()["label"] for r in replies]
    assert labels == [split.labels[y] for y in split.y_test[:size]]
    for reply in replies:
        assert sum(reply.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("mix", MIXES)
def test_iris_mixed_batches_answer_each_request(iris: LocalModel, mix: str) -> None:
    split = iris_split()
    good = iter(zip(split.x_test, split.y_test, strict=True))
    bad = itertools.cycle(IRIS_BAD)
    plan: list[tuple[Request, int, str]] = []
    for kind in mix:
        if kind == "g":
            features, species = next(good)
            plan.append((Request.json({"features": features.tolist()}), 200, split.labels[species]))
        else:
            plan.append(next(bad))
    replies = iris.predict([request for request, _, _ in plan])
    assert len(replies) == len(mix)
    for reply, (_, status, expected) in zip(replies, plan, strict=True):
        if status == 200:
            assert reply.status == 200
            assert reply.json()["label"] == expected
        else:
            assert_error(reply, status, expected)


def test_iris_accepts_named_features_and_bare_lists(iris: LocalModel) -> None:
    named = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    replies = iris.predict([Request.json(named), Request.json([6.7, 3.0, 5.2, 2.3])])
    assert [r.json()["label"] for r in replies] == ["virginica", "virginica"]


def test_iris_describe_reports_the_custom_metadata(iris: LocalModel) -> None:
    before = iris.describe()["worker"]
    iris.predict([Request.json([5.1, 3.5, 1.4, 0.2]), Request.json([1])])
    described = iris.describe()
    assert described["status"] == "ready"
    assert described["model"] == {"name": "iris", "version": "1.0"}
    assert described["handler"].endswith("IrisHandler")
    assert described["labels"] == ["setosa", "versicolor", "virginica"]
    shipped = archived_setting(ROOT, "iris")  # the spec's batch settings, as archived
    assert described["batching"]["batchSize"] == shipped.batch_size
    assert described["batching"]["maxBatchDelay"] == shipped.max_batch_delay
    assert described["warmup"]["enabled"] and described["warmup"]["ran"]
    assert set(described["input_schema"]) and set(described["output_schema"])
    assert described["worker"]["requests"] == before["requests"] + 2
    assert described["worker"]["errors"] == before["errors"] + 1


# ----- digits ----------------------------------------------------------------------------------
def encode(image: np.ndarray, fmt: str) -> bytes:
    return digit_png(image, fmt)


def test_digits_held_out_accuracy_through_the_worker_path(digits: LocalModel) -> None:
    split = digits_split()
    images, truth = split.x_test[:120], split.y_test[:120]
    predicted = []
    for start in range(0, len(images), 8):
        batch = [Request.raw(encode(x, "PNG"), "image/png") for x in images[start : start + 8]]
        predicted += [r.json()["digit"] for r in digits.predict(batch)]
    assert np.mean(np.array(predicted) == truth) >= 0.95


def test_digits_accepts_jpeg_base64_form_fields_and_dark_ink(digits: LocalModel) -> None:
    split = digits_split()
    image, digit = split.x_test[0], int(split.y_test[0])
    big = Image.fromarray(np.uint8(255 - image * 255 / 16)).resize(
        (64, 64), Image.Resampling.NEAREST
    )
    light_paper = io.BytesIO()
    big.save(light_paper, format="PNG")
    requests = [
        Request.raw(encode(image, "JPEG"), "image/jpeg"),
        Request.json({"b64": base64.b64encode(encode(image, "PNG")).decode()}),
        Request.form(data=encode(image, "PNG")),
        Request.raw(light_paper.getvalue(), "image/png"),
    ]
    replies = digits.predict(requests)
    assert [r.json()["digit"] for r in replies] == [digit] * 4
    assert [len(r.json()["top_k"]) for r in replies] == [3] * 4


DIGITS_BAD = [
    (Request.raw(b"this is not an image", "image/png"), 415, "not an image"),
    (Request.raw(digit_png(np.eye(8) * 16)[:-20], "image/png"), 400, "truncated or corrupt"),
    (Request.raw(b"", "image/png"), 400, "request body is empty"),
    (Request.json({"picture": "abc"}), 400, "no base64 field"),
    (Request.json({"b64": "!!!"}), 400, "not valid base64"),
    (Request.form(a=b"1", b=b"2"), 400, "cannot tell which form field"),
]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_digits_mixed_batches(digits: LocalModel, size: int) -> None:
    split = digits_split()
    requests, expected = [], []
    for i in range(size):
        if i % 2:
            request, status, fragment = DIGITS_BAD[i % len(DIGITS_BAD)]
            requests.append(request)
            expected.append((status, fragment))
        else:
            requests.append(Request.raw(encode(split.x_test[i], "PNG"), "image/png"))
            expected.append((200, int(split.y_test[i])))
    for reply, (status, want) in zip(digits.predict(requests), expected, strict=True):
        if status == 200:
            assert reply.status == 200
            assert reply.json()["digit"] == want
        else:
            assert_error(reply, status, str(want))


def test_digits_refuses_huge_images_before_decoding(digits: LocalModel) -> None:
    out = io.BytesIO()
    Image.new("L", (3000, 3000)).save(out, format="PNG")
    assert_error(digits.predict([Request.raw(out.getvalue(), "image/png")])[0], 413, "3000x3000")


# ----- empty and failing models ----------------------------------------------------------------
@pytest.mark.parametrize("size", BATCH_SIZES)
def test_empty_model_answers_anything(model_store: Path, size: int) -> None:
    with LocalModel.from_mar(model_store / "empty_model.mar") as model:
        bodies = [Request.raw(b""), Request.json({"x": 1}), Request.raw(b"\x00\x01")] * size
        replies = model.predict(bodies[:size])
    assert [r.json()["status"] for r in replies] == ["ok"] * size


def test_failing_model_fails_initialize_naming_the_model(model_store: Path) -> None:
    with pytest.raises(
        ModelLoadFailed, match="model 'failing_model' fails to initialize on purpose"
    ):
        LocalModel.from_mar(model_store / "failing_model.mar")


# ----- loading errors name the file or option --------------------------------------------------
def test_missing_weights_name_the_file(model_store: Path, tmp_path: Path) -> None:
    model_dir = unpack(model_store / "iris.mar", tmp_path)
    (model_dir / "iris.pt").unlink()
    with pytest.raises(ModelLoadFailed, match=r"file 'iris\.pt' is missing from the archive"):
        LocalModel(model_dir)


def test_broken_weights_name_the_file(model_store: Path, tmp_path: Path) -> None:
    model_dir = unpack(model_store / "digits.mar", tmp_path)
    (model_dir / "digits.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadFailed, match=r"weights file 'digits\.pt' is broken"):
        LocalModel(model_dir)


def test_bad_handler_option_fails_initialize_naming_it(model_store: Path, tmp_path: Path) -> None:
    model_dir = unpack(model_store / "digits.mar", tmp_path)
    config = model_dir / "model-config.yml"
    config.write_text(config.read_text().replace("top_k: 3", "top_k: 30"))
    with pytest.raises(ModelLoadFailed, match="'top_k' is 30"):
        LocalModel(model_dir)


# ----- failures the handler did not expect -----------------------------------------------------
FLAKY = """
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.errors import BadRequest

class Flaky(ToolkitHandler):
    def parse_request(self, payload):
        value = payload.json()
        if not isinstance(value, int):
            raise BadRequest("send an integer")
        return value

    def inference(self, batch):
        if 13 in batch:
            raise RuntimeError("secret internals: unlucky number")
        return [x * 2 for x in batch]

    def postprocess(self, outputs):
        return outputs[:-1] if -2 in outputs else outputs
"""


@pytest.fixture()
def flaky(tmp_path: Path) -> Iterator[LocalModel]:
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(
        '{"model": {"modelName": "flaky", "modelVersion": "1", "handler": "flaky.py"}}'
    )
    with LocalModel(tmp_path, batch_size=4) as model:
        yield model


def test_an_unexpected_failure_fails_only_its_request(flaky: LocalModel) -> None:
    replies = flaky.predict([Request.json(1), Request.json(13), Request.json(2), Request.json("x")])
    assert [r.status for r in replies] == [200, 500, 200, 400]
    assert [replies[0].json(), replies[2].json()] == [2, 4]
    assert "secret" not in replies[1].body.decode()
    assert_error(replies[1], 500, "Internal error")


def test_a_result_count_mismatch_is_caught(flaky: LocalModel) -> None:
    replies = flaky.predict([Request.json(-1), Request.json(5)])
    assert [r.status for r in replies] == [500, 200]


# ----- warmup and metrics ----------------------------------------------------------------------
def test_warmup_can_be_turned_off_in_the_handler_section(model_store: Path, tmp_path: Path) -> None:
    model_dir = unpack(model_store / "iris.mar", tmp_path)
    config = model_dir / "model-config.yml"
    config.write_text(config.read_text().replace("warmup: true", "warmup: false"))
    with LocalModel(model_dir) as model:
        warmup = model.describe()["warmup"]
    assert warmup == {"enabled": False, "ran": False, "ms": None}


def test_metrics_are_emitted_per_batch(iris: LocalModel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ts.metrics")
    iris.predict([Request.json([5.1, 3.5, 1.4, 0.2]), Request.json([1]), Request.json([1])])
    lines = [r.getMessage() for r in caplog.records if "[METRICS]Toolkit" in r.getMessage()]
    assert any(line.startswith("[METRICS]ToolkitRequests.Count:3|") for line in lines), lines
    assert any(line.startswith("[METRICS]ToolkitRequestErrors.Count:2|") for line in lines)
    for stage in ("Preprocess", "Inference", "Postprocess"):
        assert any(line.startswith(f"[METRICS]Toolkit{stage}Time.Milliseconds:") for line in lines)
    assert all("ModelName:iris" in line for line in lines)


def test_prometheus_metrics_are_one_observation_per_request(
    iris: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ts.metrics")
    iris.predict([Request.json([5.1, 3.5, 1.4, 0.2]), Request.json([1]), Request.json([1])])
    lines = [r.getMessage() for r in caplog.records if "[METRICS]servekit_" in r.getMessage()]
    latency = [line for line in lines if line.startswith("[METRICS]servekit_request_seconds.")]
    assert len(latency) == 3, lines  # one per request, not one per batch
    assert all("#type:HISTOGRAM" in line and "model_name:iris" in line for line in latency)
    seconds = {float(line.split(":", 1)[1].split("|", 1)[0]) for line in latency}
    assert len(seconds) == 1 and 0 < seconds.pop() < 10  # the batch's time, in seconds
    by_code = {
        line.split("code:")[1].split(",")[0].split("|")[0]: line.split(":", 1)[1].split("|")[0]
        for line in lines
        if line.startswith("[METRICS]servekit_responses_total.")
    }
    assert by_code == {"200": "1", "400": "2"}


def test_response_counters_start_at_zero_when_a_worker_starts(
    model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TorchServe makes a series at its first increment: without these zeros the first burst
    of 500s would be invisible to rate() and increase()."""
    caplog.set_level("INFO", logger="ts.metrics")
    with LocalModel.from_mar(model_store / "iris.mar"):
        lines = [r.getMessage() for r in caplog.records]
    zeros = {
        line.split("code:")[1].split("|")[0].split(",")[0]
        for line in lines
        if line.startswith("[METRICS]servekit_responses_total.Count:0|")
    }
    assert zeros == {"200", "400", "413", "500", "503", "507"}


def test_closing_a_model_forgets_its_archived_modules(model_store: Path) -> None:
    with LocalModel.from_mar(model_store / "iris.mar") as model:
        archived = Path(sys.modules["handlers"].__file__ or "").parent
        assert archived.is_relative_to(model.model_dir)
    import handlers.digits_options  # the repo's package again, not the deleted copy

    assert not Path(handlers.digits_options.__file__ or "").is_relative_to(archived)


# ----- hostile clients (issue 11): their own 4xx, never a 500, never NaN in a 200 --------------
def strict_json(body: bytes) -> Any:
    def refuse(literal: str) -> object:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(body, parse_constant=refuse)


IRIS_HOSTILE = [
    (b'{"features": [1e39, 3, 1, 1]}', "feature 0 (sepal_length) is 1e+39; expected at most 1000"),
    (b'{"features": [1, 3e38, 1, 1]}', "feature 1 (sepal_width) is 3e+38; expected at most 1000"),
    (b"[1, 2, 3, " + b"7" * 400 + b"]", "feature 3 (petal_width) is an integer of 400 digits"),
    (b"[1, 2, NaN, 4]", "JSON number at $[2] is NaN"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deep"),
    (b"[1, 2, 3, " + b"1" * 5000 + b"]", "JSON integer of 5000 digits"),
]


@pytest.mark.parametrize(("body", "fragment"), IRIS_HOSTILE)
def test_iris_hostile_numbers_and_shapes_are_400s(
    iris: LocalModel, body: bytes, fragment: str
) -> None:
    good = Request.json([6.7, 3.0, 5.2, 2.3])
    replies = iris.predict([Request.raw(body, "application/json"), good])
    assert_error(replies[0], 400, fragment)
    assert replies[1].status == 200
    assert strict_json(replies[1].body) == replies[1].json()
    assert replies[1].json()["label"] == "virginica"


def test_iris_largest_accepted_features_still_answer_strict_json(iris: LocalModel) -> None:
    reply = iris.predict([Request.json([1000, 1000, 0, 1000])])[0]
    assert reply.status == 200
    assert sum(strict_json(reply.body)["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def png_with_rows_missing(image: np.ndarray) -> bytes:
    """A well-formed PNG (every CRC right) whose zlib stream holds only the first 2 rows."""
    pixels = np.asarray(image, dtype=np.uint8)
    height, width = pixels.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels[:2])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def tiff_with_text_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag (273) claims to be ASCII: PIL raised TypeError."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, format="TIFF")
    data = bytearray(out.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 2)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """Only a PNG header: PIL refuses it as a decompression bomb before any pixel."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# PIL opens this as EPS and would run Ghostscript on it: not a format served here.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"
DIGITS_HOSTILE = [
    (
        Request.raw(png_with_rows_missing(np.eye(64) * 255), "image/png"),
        400,
        "ends before the last",
    ),
    (Request.raw(tiff_with_text_strip_offsets(), "image/tiff"), 400, "corrupt: TypeError"),
    (Request.raw(png_declaring(20_000, 20_000), "image/png"), 413, "too large to decode"),
    (Request.raw(EPS, "image/x-eps"), 415, "JPEG, PNG, GIF, BMP, WEBP, TIFF, PPM"),
]


@pytest.mark.parametrize(("request_", "status", "fragment"), DIGITS_HOSTILE)
def test_digits_hostile_images_get_their_own_4xx(
    digits: LocalModel, request_: Request, status: int, fragment: str
) -> None:
    split = digits_split()
    good = Request.raw(encode(split.x_test[3], "PNG"), "image/png")
    replies = digits.predict([good, request_])
    assert_error(replies[1], status, fragment)
    assert replies[0].json()["digit"] == int(split.y_test[3])


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_digits_accept_base64_wrapped_at_76_columns(digits: LocalModel, newline: bytes) -> None:
    split = digits_split()
    big = Image.fromarray(np.uint8(split.x_test[5] * 255 / 16)).resize((64, 64))
    out = io.BytesIO()
    big.save(out, format="PNG")
    wrapped = base64.encodebytes(out.getvalue()).replace(b"\n", newline)
    assert wrapped.count(newline) > 1
    reply = digits.predict([Request.raw(wrapped, "text/plain")])[0]
    assert reply.status == 200, reply.body
    assert reply.json()["digit"] == int(split.y_test[5])


@pytest.mark.timeout(20)
def test_digits_base64_check_does_not_hold_the_worker(digits: LocalModel) -> None:
    body = b"A" + b" " * 100_000 + b"!"
    reply = digits.predict([Request.raw(body, "application/x-www-form-urlencoded")])[0]
    assert_error(reply, 415, "not an image")

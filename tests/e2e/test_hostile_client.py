"""A hostile client on a real TorchServe: malformed bodies of many kinds to every model,
sent at once with good requests so that they share batches.

The promise under test: every good request gets 200 and the right answer, every bad one a
4xx JSON error naming its problem, no worker restarts, every handler stays ``ready``.
The one exception TorchServe's Java frontend makes (a malformed form body is its own 500,
before any handler runs) is shown apart: it never reaches a worker, so it cannot count
against a model's health.
"""

from __future__ import annotations

import io
import json
import random
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from sklearn.datasets import load_sample_image

from servekit.datasets import digit_png, digits_split
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, describe, every_worker, wait_ready

pytestmark = pytest.mark.e2e

MODELS = ["iris", "digits", "empty_model", "minilm", "efficientnet"]
ROUNDS = 2


@dataclass(frozen=True)
class Body:
    name: str
    data: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    frontend: bool = False  # answered by the Java frontend itself, with an empty body


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).save(out, format="JPEG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and carries one empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    """A real 64x64 PNG whose pixel data stops after a few rows."""
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", compress_level=0)
    whole = out.getvalue()
    return whole[: len(whole) // 8]


def good_bodies() -> dict[str, Body]:
    digit = digit_png(digits_split().x_test[0])
    return {
        "iris": Body("iris", b'{"features": [5.1, 3.5, 1.4, 0.2]}', "application/json"),
        "digits": Body("digit png", digit, "image/png"),
        "empty_model": Body("anything", b"hello", "text/plain"),
        "minilm": Body("sentence", b"A man is eating food.", "text/plain"),
        "efficientnet": Body("flower jpeg", jpeg(), "image/jpeg"),
    }


def hostile_bodies() -> list[Body]:
    rng = random.Random(11)
    flower = jpeg()
    json_type, text, octets = "application/json", "text/plain", "application/octet-stream"
    return [
        Body("empty body", b"", json_type),
        Body("unclosed JSON", b'{"features": [1, 2', json_type),
        Body("JSON nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000, json_type),
        Body("objects nested 20,000 deep", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, json_type),
        Body("5,000-digit integer", b"9" * 5_000, json_type),
        Body("feature 1e39 (inf as float32)", b'{"features": [1e39, 1, 1, 1]}', json_type),
        Body("400-digit feature", b'{"features": [' + b"9" * 400 + b", 1, 1, 1]}", json_type),
        Body("NaN literal", b"[NaN, 1, 2, 3]", json_type),
        Body("lone surrogate string", b'"\\ud800"', json_type),
        Body("lone surrogate in a list", b'["fine", "\\udfff"]', json_type),
        Body("invalid UTF-8 text", b"\xed\xa0\x80\xff\xfe", text),
        Body("backtracking bait (text)", b"A" + b" " * 100_000 + b"!", text),
        Body("backtracking bait (other type)", b"A" + b" " * 100_000 + b"!", "application/x-thing"),
        Body("random bytes", rng.randbytes(4096), octets),
        Body("bad base64 field", b'{"b64": "!!!not base64!!!"}', json_type),
        Body("truncated PNG", truncated_png(), "image/png"),
        Body("truncated JPEG", flower[: len(flower) // 3], "image/jpeg"),
        Body("malformed TIFF", b"II*\x00\x08\x00\x00\x00" + b"\xff" * 64, "image/tiff"),
        Body("PNG declaring 50,000 x 50,000", png_header_only(50_000, 50_000), "image/png"),
        Body("half a million numbers", b"[" + b"1," * 500_000 + b"1]", json_type),
        Body("a 1 MB string", json.dumps("word " * 200_000).encode(), json_type),
        Body("over max_request_size", b"a" * 7_000_000, octets, frontend=True),
    ]


def is_empty_model_answer(response: requests.Response) -> bool:
    return response.status_code == 200 and response.json().get("status") == "ok"


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("torchserve-hostile")
    log_mode = {"metrics_mode": "log"}  # the other metrics mode: the last test reads its log
    with running(
        ROOT / "config.properties", workdir, model_store=model_store, models=MODELS, extra=log_mode
    ) as ts:
        wait_ready(ts, MODELS)
        yield ts


def post(server: TorchServe, model: str, body: Body) -> requests.Response:
    return requests.post(
        f"{server.inference_url}/predictions/{model}",
        data=body.data,
        headers={"Content-Type": body.content_type, **body.headers},
        timeout=120,
    )


def close(got: Any, want: Any) -> bool:
    """Equal JSON, numbers within what batching changes (padding, summation order)."""
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and abs(got - want) <= 1e-4
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(close(got[k], want[k]) for k in want)
        )
    return bool(got == want)


def worker_pids(server: TorchServe, model: str) -> list[int]:
    return sorted(w["pid"] for w in describe(server, model)["workers"])


def batched(workers: list[Any]) -> int:
    """Requests the model's workers (as many as its spec says) served in batches of two or more."""
    return sum(
        int(size) * n
        for metadata in workers
        for size, n in metadata["worker"]["batches"].items()
        if int(size) > 1
    )


@pytest.mark.parametrize("model", MODELS)
def test_hostile_bodies_share_batches_with_good_ones_and_harm_nothing(
    server: TorchServe, model: str
) -> None:
    good = good_bodies()[model]
    disguised = Body(
        good.name + " with a describe header", good.data, good.content_type, {"describe": "True"}
    )
    alone = post(server, model, good)
    assert alone.status_code == 200, alone.text
    expected = alone.json()
    pids, before = worker_pids(server, model), every_worker(server, model)

    plan: list[tuple[bool, Body]] = []
    for _ in range(ROUNDS):
        for bad in hostile_bodies():
            plan += [(False, bad), (True, good)]
        plan.append((True, disguised))
    start = threading.Barrier(len(plan))

    def send(item: tuple[bool, Body]) -> requests.Response:
        start.wait()
        return post(server, model, item[1])

    with ThreadPoolExecutor(len(plan)) as pool:
        responses = list(pool.map(send, plan))

    wrong = []
    for (is_good, body), response in zip(plan, responses, strict=True):
        if is_good:
            if response.status_code != 200 or not close(response.json(), expected):
                wrong.append(f"good '{body.name}': {response.status_code} {response.text:.200}")
            continue
        if model == "empty_model" and is_empty_model_answer(response):
            continue  # it accepts any body: a 200 is its right answer
        if body.frontend and 400 <= response.status_code < 500:
            continue
        error = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )
        if (
            not 400 <= response.status_code < 500
            or not isinstance(error, dict)
            or not (error.get("code") == response.status_code and error.get("message"))
        ):
            wrong.append(f"bad '{body.name}': {response.status_code} {response.text:.200}")
    assert not wrong, "\n".join(wrong)

    after = every_worker(server, model)
    assert worker_pids(server, model) == pids, "a worker was restarted"
    for metadata in after:
        assert metadata["status"] == "ready", metadata["self_test"]
        assert metadata["failures_in_a_row"] == 0
    if after[0]["batching"]["batchSize"] > 1:
        assert batched(after) > batched(before), "good and bad requests never shared a batch"


MALFORMED_FORMS = [
    Body(
        "multipart part without Content-Disposition",
        b"--xyz\r\n\r\nabc\r\n--xyz--\r\n",
        "multipart/form-data; boundary=xyz",
    ),
    Body(
        "multipart part with an unknown charset",
        b'--xyz\r\nContent-Disposition: form-data; name="data"\r\n'
        b"Content-Type: text/plain; charset=nope\r\n\r\nabc\r\n--xyz--\r\n",
        "multipart/form-data; boundary=xyz",
    ),
    Body("urlencoded with a broken escape", b"data=%zz%", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize("body", MALFORMED_FORMS, ids=lambda b: b.name)
def test_the_frontends_own_500_for_a_malformed_form_never_reaches_the_model(
    server: TorchServe, body: Body
) -> None:
    pids, before = worker_pids(server, "iris"), every_worker(server, "iris")
    response = post(server, "iris", body)
    # TorchServe's Java frontend decodes forms itself; the toolkit cannot change its answer
    assert response.status_code == 500, response.text
    assert "ErrorDataDecoderException" in response.text
    after = every_worker(server, "iris")
    assert worker_pids(server, "iris") == pids
    assert all(m["status"] == "ready" and m["failures_in_a_row"] == 0 for m in after)
    requests_seen = [[m["worker"]["requests"] for m in ms] for ms in (before, after)]
    assert requests_seen[1] == requests_seen[0]  # no worker saw it


def test_valid_requests_that_add_up_past_the_timeout_get_503_not_a_dead_worker(
    server: TorchServe,
) -> None:
    """16 requests of 64 strings of 252 tokens each, at once: every one is within minilm's
    per-request limits, but a batch of them would run past responseTimeout and the frontend
    would kill the worker with every request in it (a hostile review saw 15 of 16 fail so).
    The batch budget (max_batch_cost, 16,384 tokens) serves what fits and answers the rest
    503 with Retry-After."""
    heavy = Body(
        "64 strings of 252 tokens",
        json.dumps([" ".join(["word"] * 250)] * 64).encode(),
        "application/json",
    )
    pids = worker_pids(server, "minilm")
    start = threading.Barrier(16)

    def send(_: int) -> requests.Response:
        start.wait()
        return post(server, "minilm", heavy)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, range(16)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 200 in codes, codes
    for response in responses:
        if response.status_code == 200:
            assert response.json()["tokens"] == [252] * 64
        else:
            assert response.headers.get("Retry-After") == "1"
            assert "budget of 16384 tokens is spent" in response.json()["message"]
    assert worker_pids(server, "minilm") == pids
    assert all(m["status"] == "ready" for m in every_worker(server, "minilm"))


def test_in_log_mode_the_hostile_requests_are_counted_in_model_metrics_log(
    server: TorchServe,
) -> None:
    """Last: it stops the server, which writes out the buffered metrics log."""
    server.stop()
    text = (server.log_dir / "model_metrics.log").read_text()
    errors = [line for line in text.splitlines() if "ToolkitRequestErrors.Count" in line]
    assert any("ModelName:iris" in line and ".Count:0|" not in line for line in errors), errors[:5]
    assert "servekit_request_seconds.Seconds" in text

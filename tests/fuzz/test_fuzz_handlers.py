"""Every model's request parsing, through TorchServe's own worker code (``servekit.serve.harness``).

The promise, for any body sent beside a valid request in one batch: every reply is a 200
with strict JSON (no NaN, no Infinity) or a 4xx JSON error ``{code, type, message,
request_id}``; the valid request gets the answer it gets alone; nothing is a 5xx; a batch
takes bounded time.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servekit.serve.harness import LocalModel, Reply, Request
from tests.fuzz.kept import corpus

MODELS = ("iris", "digits", "efficientnet", "minilm", "empty_model")
CONTENT_TYPES = {
    ".json": "application/json",
    ".txt": "text/plain",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".tiff": "image/tiff",
    ".bin": "application/octet-stream",
    ".form": "application/x-www-form-urlencoded",
}
SECONDS = 20.0  # per batch; the largest body here parses in well under a second


def kept_request(path: Path) -> Request:
    """A kept file as the client sent it: the suffix says the content type."""
    return Request.raw(path.read_bytes(), CONTENT_TYPES[path.suffix])


def valid_file(name: str) -> Path:
    return next(p for p in corpus(name) if p.stem == "valid")


@pytest.fixture(scope="module")
def served(model_store: Path) -> Iterator[dict[str, tuple[LocalModel, Any]]]:
    """Each model loaded once, with the answer its valid request gets alone."""
    loaded: dict[str, tuple[LocalModel, Any]] = {}
    try:
        for name in MODELS:
            model = LocalModel.from_mar(model_store / f"{name}.mar")
            loaded[name] = (model, None)
            reply = model.predict([kept_request(valid_file(name))])[0]
            assert reply.status == 200, reply.body
            loaded[name] = (model, strict_json(reply.body))
        yield loaded
    finally:
        for model, _ in loaded.values():
            model.close()


def strict_json(body: bytes) -> Any:
    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} in a reply is not JSON")

    return json.loads(body, parse_constant=refuse)


def same_answer(got: Any, want: Any) -> bool:
    """Equal, floats within 1e-4 (a batch may sum in another order than a single request)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_answer(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_answer, got, want))
    if isinstance(want, float):
        return isinstance(got, (int, float)) and abs(got - want) <= 1e-4
    return bool(got == want)


def check_batch(
    name: str, served: dict[str, tuple[LocalModel, Any]], bodies: list[Request]
) -> None:
    """``bodies`` with the valid request in the middle: the promise, reply by reply."""
    model, expected = served[name]
    middle = len(bodies) // 2
    batch = [*bodies[:middle], kept_request(valid_file(name)), *bodies[middle:]]
    started = time.perf_counter()
    replies = model.predict(batch)
    assert time.perf_counter() - started < SECONDS
    assert len(replies) == len(batch)
    for reply in replies:
        check_reply(reply)
    assert replies[middle].status == 200
    assert same_answer(strict_json(replies[middle].body), expected)


def check_reply(reply: Reply) -> None:
    if reply.status == 200:
        strict_json(reply.body)
        return
    assert 400 <= reply.status < 500, reply.body
    body = strict_json(reply.body)
    assert set(body) == {"code", "type", "message", "request_id"}, body
    assert body["code"] == reply.status and body["message"]


# ----- what a hostile client sends ----------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(["features", "inputs", "b64", "x"]) | st.text(), inner)
    ),
    max_leaves=20,
)


@st.composite
def special_json(draw: st.DrawFn) -> bytes:
    """Deep nesting, long integer literals, floats past float32, NaN: as raw JSON text."""
    depth = draw(st.sampled_from([1, 63, 64, 65, 900, 1200, 50_000]))
    number = draw(
        st.sampled_from([b"1e39", b"3e38", b"-0.0", b"1e400", b"NaN", b"-Infinity"])
        | st.integers(1, 6000).map(lambda n: b"9" * n)
    )
    leaf = draw(st.sampled_from([b"[1, 2, 3, %s]", b'{"features": [%s, 1, 1, 1]}', b'"\\ud800%s"']))
    return b"[" * depth + leaf % number + b"]" * depth


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A kept input with bytes flipped, cut short or repeated (PNG chunks' CRCs made right)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(1, len(data))) :]
    return fix_png_crcs(bytes(data)) if data.startswith(b"\x89PNG") else bytes(data)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a flipped byte reaches the decoder, not the CRC check."""
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind_and_data = data[pos + 4 : pos + 8 + length]
        out += data[pos : pos + 4] + kind_and_data + struct.pack(">I", zlib.crc32(kind_and_data))
        pos += 12 + length
    return bytes(out + data[pos:])


def hostile_requests(name: str) -> st.SearchStrategy[Request]:
    seeds = [p.read_bytes() for p in corpus(name)]
    body = (
        st.binary(max_size=500)
        | json_values.map(lambda v: json.dumps(v).encode())
        | special_json()
        | mutated(seeds)
    )
    as_raw = st.builds(Request.raw, body, st.sampled_from([*CONTENT_TYPES.values(), "", "text/x"]))
    as_form = st.builds(lambda a, b: Request.form(data=a, x=b), body, body)
    return as_raw | as_form | st.sampled_from([kept_request(p) for p in corpus(name)])


def draw_batch(name: str, data: st.DataObject) -> list[Request]:
    return data.draw(st.lists(hostile_requests(name), min_size=1, max_size=3), label="bodies")


@pytest.mark.parametrize("name", [m for m in MODELS if m != "efficientnet"])
@given(data=st.data())
def test_any_body_beside_a_valid_request(
    name: str, served: dict[str, tuple[LocalModel, Any]], data: st.DataObject
) -> None:
    check_batch(name, served, draw_batch(name, data))


@settings(max_examples=max(10, settings().max_examples // 3))  # 0.3 s a batch on 2 cores
@given(data=st.data())
def test_any_body_beside_a_valid_photo(
    served: dict[str, tuple[LocalModel, Any]], data: st.DataObject
) -> None:
    check_batch("efficientnet", served, draw_batch("efficientnet", data))


@pytest.mark.parametrize(
    ("name", "kept"),
    [(name, path) for name in MODELS for path in [*corpus(name), *corpus("decoding")]],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_kept_inputs(name: str, kept: Path, served: dict[str, tuple[LocalModel, Any]]) -> None:
    check_batch(name, served, [kept_request(kept)])

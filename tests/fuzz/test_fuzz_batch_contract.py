"""The batch contract for any batch a client can make: any fields, content types, headers
(``describe: True`` included) and bytes, through TorchServe's own worker code.

Promise: one reply per request, each 200 with strict JSON or a 4xx JSON error naming its
problem; never a 5xx, never the describe metadata in place of a prediction, and the
handler stays ``ready``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.serve.harness import LocalModel, Reply, Request

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
FIELD_NAMES = st.one_of(st.sampled_from(["body", "data", "describe", "b64", "features"]), TEXT)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/octet-stream",
            "image/png",
            "multipart/form-data",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
    TEXT,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.just(b'{"features": [5.1, 3.5, 1.4, 0.2]}'),
)
HEADERS = st.lists(
    st.one_of(
        st.just(("describe", "True")),
        st.tuples(st.sampled_from(["Content-Type", "content-type", "body", "data"]), TEXT),
        st.tuples(TEXT.filter(bool), TEXT),
    ),
    max_size=3,
)
REQUESTS = st.builds(
    lambda params, headers: Request(tuple(params), tuple(headers)),
    st.lists(st.tuples(FIELD_NAMES, CONTENT_TYPES, BODIES), max_size=3),
    HEADERS,
)
GOOD = Request.json({"features": [5.1, 3.5, 1.4, 0.2]})


@pytest.fixture(scope="module")
def iris(model_store: Path) -> Iterator[LocalModel]:
    with LocalModel.from_mar(model_store / "iris.mar") as model:
        yield model


def strict_json(body: bytes) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(body, parse_constant=refuse)


def check(reply: Reply) -> object:
    body = strict_json(reply.body)
    if reply.status == 200:
        return body
    assert 400 <= reply.status < 500, (reply.status, reply.body[:300])
    assert isinstance(body, dict) and body["code"] == reply.status and body["message"], body
    return body


@given(batch=st.lists(REQUESTS, min_size=1, max_size=6))
@example(batch=[Request((), (("describe", "True"),)), GOOD])  # a describe look-alike in a batch
@example(batch=[Request((("body", "application/json", b"[1]"),), (("describe", "True"),))])
@example(batch=[Request((), (("describe", "True"), ("content-type", "multipart/form-data")))])
def test_any_batch_gets_one_answer_per_request_and_a_good_one_its_result(
    iris: LocalModel, batch: list[Request]
) -> None:
    replies = iris.predict([*batch, GOOD])
    assert len(replies) == len(batch) + 1
    for reply in replies[:-1]:
        body = check(reply)
        assert not (isinstance(body, dict) and "input_schema" in body), "a client got the metadata"
    assert replies[-1].status == 200 and check(replies[-1])["label"] == "setosa"  # type: ignore[index]
    assert iris.describe()["status"] == "ready"

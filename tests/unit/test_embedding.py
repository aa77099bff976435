"""The MiniLM text-embedding handler, in-process through TorchServe's worker code."""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from servekit.runtime.errors import ModelLoadError
from servekit.runtime.text import EmbeddingOptions
from servekit.serve.harness import LocalModel, ModelLoadFailed, Reply, Request
from servekit.serve.settings import archived_setting
from tests.conftest import ROOT

DIM = 384
BATCH_SIZES = [1, 2, 5, 8, 16]
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cheetah is running behind its prey, across the dry grass of the savanna at noon.",
    "Hi",
    "TorchServe batches requests from many clients into one call of the handler.",
    "The cat sits outside.",
    "Le chat est assis dehors.",
]
LONG = "word " * 300  # 302 tokens with [CLS] and [SEP]
HUGE = "word " * 200_000  # a million characters: over max_chars (8192)
BAD = [
    (Request.json(""), 400, "request body is empty"),
    (Request.json("   "), 400, "request body is empty"),
    (Request.json([]), 400, "list of strings is empty"),
    (Request.json(["fine", ""]), 400, "string 1 is empty"),
    (Request.json(["fine", 3]), 400, "string 1 is int; expected a string"),
    (Request.json(LONG), 413, "the string has 302 tokens; the limit is 256"),
    (Request.json(["ok", LONG]), 413, "string 1 has 302 tokens; the limit is 256"),
    (Request.json(["x"] * 65), 413, "65 strings; the limit is 64 per request"),
    (Request.json({"text": "hi"}), 400, "needs the key 'inputs'"),
    (Request.json(42), 400, "expected a string or a list of strings; got int"),
    (Request.raw(b'["unclosed', "application/json"), 400, "not valid JSON"),
]


@pytest.fixture(scope="module")
def minilm(model_store: Path) -> Iterator[LocalModel]:
    with LocalModel.from_mar(model_store / "minilm.mar") as model:
        yield model


@pytest.fixture(scope="module")
def singles(minilm: LocalModel) -> dict[str, np.ndarray]:
    """Each sentence embedded alone: the reference for every batched answer."""
    return {s: vector(minilm.predict([Request.json(s)])[0]) for s in SENTENCES}


def vector(reply: Reply) -> np.ndarray:
    assert reply.status == 200, reply.body
    return np.array(reply.json()["embedding"])


def assert_error(reply: Reply, status: int, fragment: str) -> None:
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["code"] == status
    assert fragment in body["message"], body["message"]


def test_similar_sentences_have_the_reference_cosine(minilm: LocalModel) -> None:
    reply = minilm.predict([Request.json([SENTENCES[0], SENTENCES[1]])])[0]
    a, b = np.array(reply.json()["embeddings"])
    assert float(a @ b) == pytest.approx(0.755, abs=0.01)  # sentence-transformers' own figure


def test_embeddings_are_384_dim_unit_vectors(singles: dict[str, np.ndarray]) -> None:
    for embedding in singles.values():
        assert embedding.shape == (DIM,)
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    related = float(singles["The cat sits outside."] @ singles["Le chat est assis dehors."])
    unrelated = float(singles["The cat sits outside."] @ singles["The new movie is awesome."])
    assert related > unrelated


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batches_of_lists_equal_single_results(
    minilm: LocalModel, singles: dict[str, np.ndarray], size: int
) -> None:
    cycle = itertools.cycle(SENTENCES)
    plan = [[next(cycle) for _ in range(1 + i % 3)] for i in range(size)]
    replies = minilm.predict([Request.json(texts) for texts in plan])
    for reply, texts in zip(replies, plan, strict=True):
        assert reply.status == 200, reply.body
        body = reply.json()
        assert len(body["embeddings"]) == len(body["tokens"]) == len(texts)
        for row, text in zip(body["embeddings"], texts, strict=True):
            np.testing.assert_allclose(row, singles[text], atol=1e-5)


@pytest.mark.parametrize("mix", ["b", "gb", "bg", "gbg", "bbgg", "gbgbgbgb", "gggggggggggggggb"])
def test_mixed_batches_answer_each_request(
    minilm: LocalModel, singles: dict[str, np.ndarray], mix: str
) -> None:
    good, bad = itertools.cycle(SENTENCES), itertools.cycle(BAD)
    plan: list[tuple[Request, int, Any]] = []
    for kind in mix:
        if kind == "g":
            text = next(good)
            plan.append((Request.json(text), 200, text))
        else:
            plan.append(next(bad))
    replies = minilm.predict([request for request, _, _ in plan])
    assert len(replies) == len(mix)
    for reply, (_, status, expected) in zip(replies, plan, strict=True):
        if status == 200:
            np.testing.assert_allclose(vector(reply), singles[expected], atol=1e-5)
        else:
            assert_error(reply, status, expected)


def test_every_bad_input_gets_its_own_error(minilm: LocalModel) -> None:
    replies = minilm.predict([request for request, _, _ in BAD])
    for reply, (_, status, fragment) in zip(replies, BAD, strict=True):
        assert_error(reply, status, fragment)


def test_plain_text_and_inputs_object_are_accepted(
    minilm: LocalModel, singles: dict[str, np.ndarray]
) -> None:
    text = SENTENCES[2]
    replies = minilm.predict(
        [Request.text(text), Request.json({"inputs": text}), Request.json({"input": [text]})]
    )
    np.testing.assert_allclose(vector(replies[0]), singles[text], atol=1e-5)
    np.testing.assert_allclose(vector(replies[1]), singles[text], atol=1e-5)
    assert replies[1].json()["tokens"] == 8
    np.testing.assert_allclose(replies[2].json()["embeddings"][0], singles[text], atol=1e-5)


def test_describe_reports_options_and_warmup(minilm: LocalModel) -> None:
    described = minilm.describe()
    assert described["status"] == "ready"
    assert described["handler"].endswith("EmbeddingHandler")
    assert described["batching"]["batchSize"] == archived_setting(ROOT, "minilm").batch_size
    assert described["options"]["values"]["max_tokens"] == 256
    assert described["warmup"]["ran"]


def with_options(mar: Path, dest: Path, **options: Any) -> Path:
    """``mar`` unpacked into ``dest`` with its ``handler:`` options changed."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    config_file = dest / "model-config.yml"
    config = yaml.safe_load(config_file.read_text())
    config["handler"] = {**config["handler"], **options}
    config_file.write_text(yaml.safe_dump(config))
    return dest


def test_truncation_small_groups_and_raw_vectors(
    model_store: Path, tmp_path: Path, singles: dict[str, np.ndarray]
) -> None:
    unpacked = with_options(
        model_store / "minilm.mar",
        tmp_path / "minilm",
        truncate=True,
        max_tokens=8,
        group_size=2,
        normalize=False,
    )
    model = LocalModel(unpacked)
    replies = model.predict(
        [Request.json(SENTENCES[:5]), Request.json(LONG), Request.json("Hi"), Request.json(HUGE)]
    )
    assert [r.status for r in replies] == [200, 200, 200, 200]
    assert replies[3].json()["tokens"] == 8  # cut to max_chars first, then to max_tokens
    lists = replies[0].json()
    assert lists["tokens"] == [8, 8, 8, 8, 3]  # truncated to max_tokens=8
    assert replies[1].json()["tokens"] == 8
    hi = np.array(replies[2].json()["embedding"])
    assert np.linalg.norm(hi) > 1.5  # not normalized
    np.testing.assert_allclose(hi / np.linalg.norm(hi), singles["Hi"], atol=1e-5)
    np.testing.assert_allclose(lists["embeddings"][4], hi, atol=1e-5)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"max_tokens": 0}, "'max_tokens' is 0; it must be >= 1"),
        ({"pooling": "max"}, "'pooling' is 'max'; allowed: mean, cls"),
        ({"group_size": 0}, "'group_size' is 0; it must be >= 1"),
        ({"max_chars": 0}, "'max_chars' is 0; it must be >= 1"),
        ({"max_tokns": 10}, "did you mean 'max_tokens'?"),
        ({"truncate": "yes"}, "'truncate' in section 'handler' is 'yes' (str); expected bool"),
    ],
)
def test_bad_options_fail_at_load(section: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        EmbeddingOptions.from_section(section)


def test_more_tokens_than_the_model_reads_fail_at_load(model_store: Path, tmp_path: Path) -> None:
    unpacked = with_options(model_store / "minilm.mar", tmp_path / "minilm", max_tokens=600)
    with pytest.raises(ModelLoadFailed, match="'max_tokens' is 600; the model reads at most 512"):
        LocalModel(unpacked)


# ----- hostile strings (issue 11): their own 4xx, in bounded time -----------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'"\\ud800"', 400, "lone surrogate (\\ud800 at character 0)"),
        (b'["fine", "caf\\u00e9 \\udfff"]', 400, "JSON string at $[1] holds a lone surrogate"),
        (b'{"inputs": ' * 70 + b'"x"' + b"}" * 70, 400, "nested too deep"),
        (b'"' + b"word " * 1_000_000 + b'"', 413, "the string has 5000000 characters"),
        (b'["a", "' + b"a" * 9000 + b'"]', 413, "string 1 has 9000 characters; the limit is 8192"),
    ],
)
def test_hostile_strings_get_their_own_4xx(
    minilm: LocalModel, singles: dict[str, np.ndarray], body: bytes, status: int, fragment: str
) -> None:
    replies = minilm.predict([Request.raw(body, "application/json"), Request.json(SENTENCES[0])])
    assert_error(replies[0], status, fragment)
    np.testing.assert_allclose(vector(replies[1]), singles[SENTENCES[0]], atol=1e-5)

"""The accuracy gates, measured: a backend's answers against eager fp32 on a held-out set made for
the kind, both run through the handler's own ``parse_request``, ``preprocess`` and ``inference``
(only the model differs).

- ``embedding``: sentences (``heldout/text_embedding.json``); mean and lowest cosine, and the
  nearest neighbour of every retrieval sentence.
- ``classifier``: real photos that installed packages ship (``heldout/image_classifier.json``
  names each, its package, sha256 and licence), each with seeded crops and flips; top-1
  agreement and top-5 overlap. Static int8 is calibrated on other photos (``calibration/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from servekit.errors import ArchiveError
from servekit.runtime.backend_names import CLASSIFIER, EMBEDDING
from servekit.runtime.backends import OnnxBackendHandler, OnnxModel
from servekit.runtime.decoding import Payload
from servekit.serve.backends import (
    HELDOUT_DIR,
    HELDOUT_FILES,
    ClassifierFigures,
    EmbeddingFigures,
    Figures,
)


def outputs(handler: OnnxBackendHandler[Any], items: Sequence[Any], batch: int) -> torch.Tensor:
    """One row per item: what ``handler.inference`` gives for it (logits, or pooled vectors),
    run in batches of ``batch`` items (``ALL``: every item in one call, as a large served batch
    reaches the handler)."""
    rows = []
    batch = batch or len(items)
    with torch.inference_mode():
        for start in range(0, len(items), batch):
            out = handler.inference(handler.preprocess(list(items[start : start + batch])))
            if isinstance(out, list):  # the embedding kind: (item, rows) per request
                out = torch.cat([vectors for _, vectors in out])
            rows.append(out.float())
    return torch.cat(rows)


@contextlib.contextmanager
def running(handler: OnnxBackendHandler[Any], path: Path) -> Iterator[None]:
    """``handler`` with the ONNX model in ``path`` (one thread) instead of its eager model."""
    eager = handler.model
    handler.model = OnnxModel(path, threads=1)  # one thread: figures that do not move with cores
    try:
        yield
    finally:
        handler.model = eager


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread while measuring: the same figures on any machine size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


ALL = 0
"""A batching of the gate: every held-out item in one call of the handler."""


class Gate:
    """A held-out set and how a backend's rows are compared with eager's."""

    kind = ""
    batchings: tuple[int, ...] = (8,)
    """Items per call of the handler while measuring (``ALL``: every item in one call). Where
    answers depend on batch-mates there are several: each is measured, the worst figures count."""

    def __init__(self, handler: OnnxBackendHandler[Any]) -> None:
        self.handler = handler
        self.items = self.heldout_items()
        with one_thread():
            self.expected_in = {
                batch: outputs(handler, self.items, batch) for batch in self.batchings
            }

    @property
    def expected(self) -> torch.Tensor:
        """Eager fp32's rows, batched the first way."""
        return self.expected_in[self.batchings[0]]

    def heldout_items(self) -> list[Any]:
        raise NotImplementedError

    def compare(
        self, backend: str, got: torch.Tensor, expected: torch.Tensor, kept: tuple[str, ...]
    ) -> Figures:
        raise NotImplementedError

    @classmethod
    def calibration(cls, handler: OnnxBackendHandler[Any]) -> list[np.ndarray]:
        """Batches of model input for static int8 (other data than the held-out set)."""
        raise ArchiveError(f"the {cls.kind} gate has no calibration set: use dynamic int8")

    def measure(self, backend: str, path: Path, kept: tuple[str, ...] = ()) -> Figures:
        """The figures of the backend in ``path`` (``kept``: its layers left in fp32); with
        ``batchings``, the worst of each batching's."""
        with running(self.handler, path), one_thread():
            measured = [
                self.compare(backend, outputs(self.handler, self.items, batch), expected, kept)
                for batch, expected in self.expected_in.items()
            ]
        return measured[0] if len(measured) == 1 else self.worst(measured)

    def worst(self, measured: list[Figures]) -> Figures:
        raise NotImplementedError


class EmbeddingGate(Gate):
    kind = EMBEDDING
    batchings = (1, ALL)
    """Each sentence alone, and all of them in one call, where the handler sorts them by length
    and runs them in groups of ``group_size`` (8 for MiniLM), as a full served batch: with
    dynamic int8 a vector depends on its batch-mates (activation scales are per tensor), so
    a backend must pass both ways."""

    def worst(self, measured: list[Figures]) -> Figures:
        figures = [f for f in measured if isinstance(f, EmbeddingFigures)]
        return dataclasses.replace(
            figures[0],
            mean_cosine=min(f.mean_cosine for f in figures),
            min_cosine=min(f.min_cosine for f in figures),
            neighbours_kept=min(f.neighbours_kept for f in figures),
            batching=f"the worst of each sentence alone and in groups of {self.group_size()}",
        )

    def group_size(self) -> int:
        return int(getattr(self.handler.options, "group_size", 0)) or len(self.items)

    def heldout_items(self) -> list[Any]:
        data = read_heldout(EMBEDDING)
        self.sentences, self.retrieval = list(data["sentences"]), list(data["retrieval"])
        return [self.parse(text) for text in [*self.sentences, *self.retrieval]]

    def parse(self, text: str) -> Any:
        return self.handler.parse_request(Payload(text, "body", "text/plain"))

    def compare(
        self, backend: str, got: torch.Tensor, expected: torch.Tensor, kept: tuple[str, ...]
    ) -> Figures:
        expected = torch.nn.functional.normalize(expected, p=2.0, dim=1)
        got = torch.nn.functional.normalize(got, p=2.0, dim=1)
        cosines = (expected * got).sum(dim=1)
        split = len(self.sentences)
        same = int((nearest(expected[split:]) == nearest(got[split:])).sum())
        return EmbeddingFigures(
            backend,
            mean_cosine=round(float(cosines.mean()), 5),
            min_cosine=round(float(cosines.min()), 5),
            neighbours_kept=same,
            neighbours=len(self.retrieval),
            sentences=len(self.items),
            kept_fp32=kept,
        )


def nearest(embeddings: torch.Tensor) -> torch.Tensor:
    """The index of each row's nearest other row (cosine, rows normalized)."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=1)


class ClassifierGate(Gate):
    kind = CLASSIFIER
    batchings = (8,)  # static int8 and fp32 answer an image the same in any batch

    def heldout_items(self) -> list[Any]:
        data = read_heldout(CLASSIFIER)
        recipe = data["variants"]
        images = []
        for photo in data["photos"]:
            images += variants(open_photo(photo), int(photo["variants"]), recipe)
        self.photos = len(data["photos"])
        return [self.parse(image) for image in images]

    def parse(self, jpeg: bytes) -> Any:
        return parse_image(self.handler, jpeg)

    @classmethod
    def calibration(cls, handler: OnnxBackendHandler[Any]) -> list[np.ndarray]:
        data = read_heldout(CLASSIFIER)
        recipe = data["variants"]
        images = []
        for photo in data["calibration"]:
            whole = Image.open(HELDOUT_DIR / photo["file"])
            images += variants(whole, int(photo["variants"]), recipe)
        items = [parse_image(handler, image) for image in images]
        batch = cls.batchings[0]
        batches = [handler.preprocess(items[i : i + batch]) for i in range(0, len(items), batch)]
        return [np.ascontiguousarray(batch.numpy()) for batch in batches]

    def compare(
        self, backend: str, got: torch.Tensor, expected: torch.Tensor, kept: tuple[str, ...]
    ) -> Figures:
        expected5 = expected.topk(5, dim=1).indices
        got5 = got.topk(5, dim=1).indices
        agree = int((expected5[:, 0] == got5[:, 0]).sum())
        shared = [
            len(set(a.tolist()) & set(b.tolist())) for a, b in zip(expected5, got5, strict=True)
        ]
        return ClassifierFigures(
            backend,
            top1_agreement=round(agree / len(shared), 5),
            top5_overlap=round(sum(shared) / (5 * len(shared)), 5),
            lowest_top5_overlap=min(shared),
            images=len(shared),
            photos=self.photos,
            kept_fp32=kept,
        )


def parse_image(handler: OnnxBackendHandler[Any], jpeg: bytes) -> Any:
    return handler.parse_request(Payload(jpeg, "body", "image/jpeg"))


GATES: dict[str, type[Gate]] = {EMBEDDING: EmbeddingGate, CLASSIFIER: ClassifierGate}


def read_heldout(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(HELDOUT_FILES[kind].read_text(encoding="utf-8"))
    return data


def open_photo(photo: dict[str, Any]) -> Image.Image:
    """A held-out photo from the package that ships it, checked against its sha256."""
    spec = importlib.util.find_spec(photo["package_module"])
    where = spec.submodule_search_locations if spec else None
    if not where:
        raise ArchiveError(
            f"the classifier gate's photo {photo['file']} comes with the package "
            f"{photo['package']}, which is not installed (pip install '{photo['package']}')"
        )
    path = Path(next(iter(where))) / photo["path"]
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != photo["sha256"]:
        raise ArchiveError(
            f"the classifier gate's photo {photo['file']} is missing from {photo['package']} "
            f"or is not the one the gate was made with (sha256 differs): install "
            f"{photo['package']}=={photo['version']}"
        )
    return Image.open(io.BytesIO(data))


def variants(image: Image.Image, count: int, recipe: dict[str, Any]) -> list[bytes]:
    """``count`` JPEGs of ``image``: the whole photo, then seeded crops (each side at least
    ``min_side`` of the photo's), every other one flipped left to right."""
    rgb = image.convert("RGB")
    rng = np.random.default_rng(int(recipe["seed"]))
    out = []
    for index in range(count):
        box = (0, 0, rgb.width, rgb.height)
        if index:
            width = int(rgb.width * rng.uniform(recipe["min_side"], 1.0))
            height = int(rgb.height * rng.uniform(recipe["min_side"], 1.0))
            left = int(rng.integers(0, rgb.width - width + 1))
            top = int(rng.integers(0, rgb.height - height + 1))
            box = (left, top, left + width, top + height)
        crop = rgb.crop(box)
        if index % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        encoded = io.BytesIO()
        crop.save(encoded, "JPEG", quality=int(recipe["jpeg_quality"]))
        out.append(encoded.getvalue())
    return out

"""Small real models saved the ways people bring them, for ``servekit new-model``'s tests and
its time-to-first-prediction benchmark (``models/first_prediction.py``).

- the digits CNN as TorchScript (``torch.jit.save``) and as a ``torch.export`` program (.pt2);
- the iris net as a state dict, with its class in a module file of its own (``irisnet.py``,
  written as a user's training code would have it) and the species names one a line;
- the packaged MiniLM directory (``build/models/minilm``) for ``text-embedding``;
- a MiniLM topic classifier (animals, vehicles, food): the encoder with a classification head
  trained here on a few template sentences, saved with ``save_pretrained``, for
  ``text-classifier``.

Each comes with held-out cases and their right answers. Weights come from ``models/*.pt``
(``make train``) and the packaged files (``make models-local``): nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from servekit.datasets import digit_png, digits_split, iris_split

ROOT = Path(__file__).resolve().parent.parent
MINILM = ROOT / "build" / "models" / "minilm"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

IRISNET_SOURCE = '''"""The iris classifier as trained: an MLP that standardizes its own input."""

import torch
from torch import nn


class IrisNet(nn.Module):
    def __init__(self, features: int = 4, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.layers = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x):
        return self.layers((x - self.mean) / self.std)
'''
IRIS_FEATURES = "sepal_length,sepal_width,petal_length,petal_width"

TOPICS = ("animal", "vehicle", "food")
TOPIC_WORDS = {
    "animal": ("dog", "cat", "horse", "rabbit", "lion", "cow", "tiger", "sheep", "wolf", "goat"),
    "vehicle": ("car", "truck", "bus", "bicycle", "train", "motorcycle", "van", "tram", "taxi"),
    "food": ("bread", "soup", "pizza", "salad", "cheese", "pasta", "cake", "rice", "apple pie"),
}
TEMPLATES = (
    "I saw a {} this morning.",
    "The {} was bigger than I expected.",
    "We talked about the {} for an hour.",
    "My neighbour has a new {}.",
    "There is a {} in the picture.",
)
HELD_OUT = {
    "animal": ("A hungry fox crept around the farm at night.", "The zebra grazed beside its foal."),
    "vehicle": ("The lorry drove down the motorway.", "She parked the scooter near the station."),
    "food": ("He baked a loaf of sourdough.", "They ate noodles and dumplings for dinner."),
}
FOOD, BREAD = "A man is eating food.", "A man is eating a piece of bread."  # cosine 0.755


@dataclasses.dataclass(frozen=True)
class OwnModel:
    """One model as a user brings it: the ``servekit new-model`` arguments and held-out cases
    (request body, content type, and a check of the answer)."""

    name: str
    kind: str
    args: list[str]
    cases: list[tuple[bytes, str, Callable[[Any], bool]]]


def digits_module() -> torch.nn.Module:
    from handlers.nets import DigitsNet

    net = DigitsNet()
    net.load_state_dict(torch.load(ROOT / "models" / "digits.pt", weights_only=True))
    return net.eval()


def digit_cases(count: int) -> list[tuple[bytes, str, Callable[[Any], bool]]]:
    """Held-out digits (the test split of ``make train``) as PNG, right when the label is."""
    split = digits_split()
    return [
        (digit_png(split.x_test[i]), "image/png", _label_is(str(split.y_test[i])))
        for i in range(count)
    ]


def _label_is(expected: str) -> Callable[[Any], bool]:
    return lambda answer: isinstance(answer, dict) and answer.get("label") == expected


def digits_torchscript(out: Path, cases: int = 20) -> OwnModel:
    path = out / "digits_cnn.ts"
    traced = torch.jit.trace(digits_module(), torch.zeros(2, 1, 8, 8))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(path))
    return OwnModel(
        "digits_ts",
        "image-classifier",
        [*_digit_args(), "--weights", str(path)],
        digit_cases(cases),
    )


def digits_export(out: Path, cases: int = 20) -> OwnModel:
    path = out / "digits_cnn.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        digits_module(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    return OwnModel(
        "digits_pt2",
        "image-classifier",
        [*_digit_args(), "--weights", str(path)],
        digit_cases(cases),
    )


def _digit_args() -> list[str]:
    # 8x8 grey, the whole image resized (no crop), pixels scaled to [0, 1] and left there
    return [
        "--image-size",
        "8",
        "--resize",
        "0",
        "--mode",
        "L",
        "--mean",
        "0",
        "--std",
        "1",
        "--top-k",
        "3",
    ]


def iris_state_dict(out: Path) -> OwnModel:
    from handlers.nets import IrisNet

    trained = IrisNet()
    trained.load_state_dict(torch.load(ROOT / "models" / "iris.pt", weights_only=True))
    weights, module, labels = out / "iris_state.pt", out / "irisnet.py", out / "species.txt"
    torch.save(trained.state_dict(), weights)
    module.write_text(IRISNET_SOURCE)
    species = json.loads((ROOT / "models" / "iris_labels.json").read_text())
    labels.write_text("\n".join(species) + "\n")
    split = iris_split()
    cases = [
        (
            json.dumps({"features": [float(x) for x in split.x_test[i]]}).encode(),
            "application/json",
            _label_is(species[int(split.y_test[i])]),
        )
        for i in range(len(split.x_test))
    ]
    args = [
        "--weights", str(weights), "--module", f"{module}:IrisNet",
        "--module-args", '{"hidden": 16}', "--features", IRIS_FEATURES, "--labels", str(labels),
    ]  # fmt: skip
    return OwnModel("iris_sd", "tabular", args, cases)


def minilm_embedding() -> OwnModel:
    def cosine(answer: Any) -> bool:
        food, bread = (torch.tensor(v) for v in answer["embeddings"])
        return abs(float(food @ bread) - 0.755) < 0.01

    body = json.dumps({"inputs": [FOOD, BREAD]}).encode()
    return OwnModel(
        "minilm_emb",
        "text-embedding",
        ["--weights", str(MINILM)],
        [(body, "application/json", cosine)],
    )


def topic_classifier(out: Path) -> OwnModel:
    """MiniLM with a topic head trained on template sentences (the encoder frozen), saved as a
    Hugging Face directory; right when held-out sentences get their topic."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    labels = {i: t for i, t in enumerate(TOPICS)}
    model = BertForSequenceClassification.from_pretrained(
        str(MINILM),
        num_labels=len(TOPICS),
        id2label=labels,
        label2id={t: i for i, t in labels.items()},
    )
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    sentences, targets = [], []
    for topic, words in TOPIC_WORDS.items():
        for word in words:
            for template in TEMPLATES:
                sentences.append(template.format(word))
                targets.append(TOPICS.index(topic))
    with torch.inference_mode():
        encoded = tokenizer(sentences, padding=True, return_tensors="pt")
        pooled = model.bert(**encoded).pooler_output
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    y = torch.tensor(targets)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(pooled.clone()), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    directory = out / "topics"
    model.save_pretrained(str(directory))
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, directory / name)
    cases = [
        (json.dumps({"inputs": text}).encode(), "application/json", _label_is(topic))
        for topic, texts in HELD_OUT.items()
        for text in texts
    ]
    return OwnModel("topics", "text-classifier", ["--weights", str(directory)], cases)


def all_models(out: Path, digits: int = 20) -> list[OwnModel]:
    """Every format and kind, written into ``out``."""
    return [
        digits_torchscript(out, digits),
        digits_export(out, digits),
        iris_state_dict(out),
        iris_custom(out),
        minilm_embedding(),
        topic_classifier(out),
    ]


def iris_custom(out: Path) -> OwnModel:
    """The iris net as TorchScript, served by the custom kind: raw logits back, right when the
    largest is the species'."""
    from handlers.nets import IrisNet

    trained = IrisNet()
    trained.load_state_dict(torch.load(ROOT / "models" / "iris.pt", weights_only=True))
    path = out / "iris_logits.ts"
    traced = torch.jit.trace(trained.eval(), torch.zeros(2, 4))  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(path))
    split = iris_split()

    def argmax_is(expected: int) -> Callable[[Any], bool]:
        return lambda answer: int(torch.tensor(answer["outputs"]).argmax()) == expected

    cases = [
        (
            json.dumps({"inputs": [float(x) for x in split.x_test[i]]}).encode(),
            "application/json",
            argmax_is(int(split.y_test[i])),
        )
        for i in range(len(split.x_test))
    ]
    return OwnModel("iris_raw", "custom", ["--weights", str(path), "--input-shape", "4"], cases)

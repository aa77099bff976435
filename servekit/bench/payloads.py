"""Built-in request bodies for the benchmarks: realistic inputs per model, cycled one a request.

The same bodies go to every server compared (TorchServe, and later other servers), so a
difference in figures is the server's, not the input's.
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from servekit.errors import ConfigError

# Varied lengths (3 to ~70 words), everyday English: what a semantic search index embeds.
SENTENCES = (
    "Hello there.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Where is the nearest train station?",
    "The cat sits outside on the warm stone wall.",
    "Please reset my password, I cannot log in since this morning.",
    "Two dogs are running through a field of tall green grass.",
    "The quarterly report shows revenue growth of twelve percent over last year.",
    "How do I cancel my subscription before the next billing date?",
    "She played the violin at the concert hall on Saturday night, and the audience "
    "stood up at the end.",
    "Heavy rain is expected across the northern region tomorrow, with strong winds "
    "along the coast and possible flooding in low-lying areas.",
    "The package was supposed to arrive on Tuesday, but the tracking page still says "
    "it is waiting at the distribution centre and nobody answers the phone.",
    "Researchers found that regular walking improves sleep quality in older adults.",
    "Add two cups of flour, a pinch of salt and mix until the dough is smooth.",
    "Our team meeting moved to Thursday at three in the afternoon.",
    "The museum's new exhibition brings together more than two hundred paintings, "
    "drawings and letters that trace the artist's life from his childhood in a small "
    "fishing village to his final years in Paris, where he worked almost entirely at "
    "night and rarely saw visitors.",
    "Is this jacket available in a larger size?",
    "The software update fixes a bug that caused the application to crash when "
    "opening large files from a network drive.",
    "A child is riding a red bicycle down the street.",
    "Interest rates stayed unchanged after the central bank's meeting.",
    "I would like to book a table for four people at seven o'clock.",
    "The hiking trail climbs steeply through pine forest before opening onto a wide "
    "ridge with views of the lake and the mountains beyond it.",
    "Thank you for your help yesterday.",
)

SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass(frozen=True)
class Payload:
    """Bodies to cycle, their content type and a one-line description for the results."""

    bodies: tuple[bytes, ...]
    content_type: str
    description: str


def minilm() -> Payload:
    bodies = tuple(json.dumps(s).encode() for s in SENTENCES)
    return Payload(bodies, "application/json", f"{len(bodies)} English sentences, one a request")


def iris() -> Payload:
    from sklearn.datasets import load_iris

    rows = load_iris().data.tolist()
    bodies = tuple(json.dumps({"features": row}).encode() for row in rows)
    return Payload(bodies, "application/json", f"the {len(bodies)} iris feature vectors")


def efficientnet() -> Payload:
    import sklearn.datasets

    images = Path(sklearn.datasets.__file__).parent / "images"
    bodies = tuple((images / name).read_bytes() for name in SKLEARN_PHOTOS)
    return Payload(
        bodies, "image/jpeg", "scikit-learn's sample photos " + ", ".join(SKLEARN_PHOTOS)
    )


def digits(count: int = 24) -> Payload:
    from servekit.datasets import digit_png, digits_split

    images = digits_split().x_test[:count]
    bodies = tuple(digit_png(image) for image in images)
    return Payload(bodies, "image/png", f"{len(bodies)} held-out 8x8 digits as PNG")


def empty_model() -> Payload:
    return Payload((b"{}",), "application/json", "an empty JSON object")


BUILT_IN = {
    "minilm": minilm,
    "iris": iris,
    "efficientnet": efficientnet,
    "digits": digits,
    "empty_model": empty_model,
}


def built_in(model: str) -> Payload:
    if model not in BUILT_IN:
        raise ConfigError(
            f"no built-in payload for model {model!r}; built-in: {', '.join(sorted(BUILT_IN))}; "
            "or pass --payload FILE"
        )
    return BUILT_IN[model]()


def from_file(path: Path, content_type: str | None = None) -> Payload:
    """One body (the file's bytes), or one per line for ``.jsonl``."""
    if not path.is_file():
        raise ConfigError(f"payload file {path} does not exist")
    data = path.read_bytes()
    if path.suffix == ".jsonl":
        bodies = tuple(line for line in data.splitlines() if line.strip())
        if not bodies:
            raise ConfigError(f"payload file {path} has no non-empty line")
        return Payload(
            bodies, content_type or "application/json", f"{len(bodies)} lines of {path.name}"
        )
    guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Payload((data,), content_type or guessed, path.name)


def choose(model: str | None, path: Path | None, content_type: str | None = None) -> Payload:
    """The bodies a benchmark sends: the file ``path`` (``--payload``) when given, else
    ``model``'s built-in payload; ``content_type`` (``--content-type``) overrides either's."""
    if path is not None:
        return from_file(path, content_type)
    if model is None:
        raise ConfigError("no payload: give --payload FILE")
    payload = built_in(model)
    if content_type:
        return Payload(payload.bodies, content_type, payload.description)
    return payload

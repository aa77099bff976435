"""The text kinds on a Hugging Face model directory: ``text-embedding`` (pooled, normalized
vectors) and ``text-classifier`` (a sequence-classification head's classes).

A request is one string or a list of strings (JSON, ``{"inputs": ...}``, or a text/plain body).
The strings of a whole batch are tokenized per request, sorted by length and run in padded
groups (``servekit.runtime.text_batching``); a batch holds at most ``max_batch_cost`` tokens.
Every file comes from the archive: nothing is fetched from a model hub.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from servekit.runtime.backend_names import DYNAMIC, EMBEDDING
from servekit.runtime.backends import BackendOptions, OnnxBackendHandler
from servekit.runtime.decoding import Payload, brief_list
from servekit.runtime.errors import BadRequest, ModelLoadError, PayloadTooLarge
from servekit.runtime.model_handler import ModelHandler
from servekit.runtime.options import HandlerOptions
from servekit.runtime.outputs import check_finite, class_names, first_tensor
from servekit.runtime.text_batching import LengthGroups, TextInput
from servekit.runtime.weights import HUGGINGFACE, WeightsOptions

INPUT_KEYS = ("inputs", "input")
TOKENIZERS = (
    ("tokenizer.json",),
    ("vocab.txt",),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
)
"""The files of a tokenizer, one tuple a kind: without one, transformers builds a tokenizer
with an empty vocabulary that reads every word as unknown (and answers without an error)."""


def has_tokenizer(directory: Path) -> bool:
    return any(all((directory / name).is_file() for name in files) for files in TOKENIZERS)


def tokenizer_files() -> str:
    return " or ".join(" and ".join(files) for files in TOKENIZERS)


POOLING = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class TextOptions(WeightsOptions):
    weights_format: str = HUGGINGFACE
    max_tokens: int = 256
    """Tokens per string, special tokens included; longer strings get 413 (or see truncate)."""
    truncate: bool = False
    """Cut strings longer than max_tokens instead of rejecting them."""
    max_chars: int = 8192
    """Characters per string, looked at before tokenizing: longer strings get 413, or with
    truncate are cut to this length first."""
    max_strings_per_request: int = 64
    """A request's list may hold this many strings; more get 413."""
    group_size: int = 8
    """Strings per forward pass: sorted by length, padded per group (less padding)."""
    max_batch_cost: int = 16_384
    """Tokens one batch may hold; a request over it gets 413, those past it 503."""

    def check(self) -> None:
        super().check()
        if self.weights_format != HUGGINGFACE:
            raise ModelLoadError(
                f"handler option 'weights_format' is {self.weights_format!r}; the text kinds "
                f"read a Hugging Face model directory ({HUGGINGFACE})"
            )
        for name in ("max_tokens", "max_chars", "max_strings_per_request", "group_size"):
            if getattr(self, name) < 1:
                raise ModelLoadError(
                    f"handler option '{name}' is {getattr(self, name)}; it must be >= 1"
                )


@dataclasses.dataclass(frozen=True)
class EmbeddingOptions(TextOptions, BackendOptions):
    pooling: str = "mean"
    """'mean' of the token vectors over real tokens, or the first ('cls') token's vector."""
    normalize: bool = True
    """L2-normalize the vectors (cosine similarity is then a dot product)."""

    def check(self) -> None:
        super().check()
        if self.pooling not in POOLING:
            raise ModelLoadError(
                f"handler option 'pooling' is {self.pooling!r}; allowed: {', '.join(POOLING)}"
            )


@dataclasses.dataclass(frozen=True)
class ClassifierOptions(TextOptions):
    top_k: int = 0
    """Classes listed per string, best first (0: all of them)."""

    def check(self) -> None:
        super().check()
        if self.top_k < 0:
            raise ModelLoadError(f"handler option 'top_k' is {self.top_k}; it must be >= 0")


class TextHandler(ModelHandler[TextInput]):
    """What both text kinds share: the tokenizer, the request's strings, length groups."""

    options_class: ClassVar[type[HandlerOptions]] = TextOptions
    options: TextOptions
    auto_class: ClassVar[str] = "AutoModel"
    unused: ClassVar[tuple[str, ...]] = ("pooler.",)
    """Weights this kind never uses: their absence is no error."""
    missing_hint: ClassVar[str] = "Is this the directory of a trained model?"
    cost_unit = "tokens"

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None

    def load_model(self) -> torch.nn.Module:
        transformers = self.load_tokenizer()
        where = str(self.model_dir)
        try:
            auto = getattr(transformers, self.auto_class)
            model, info = auto.from_pretrained(
                where, local_files_only=True, output_loading_info=True
            )
        except Exception as err:  # transformers raises many types for a broken directory
            raise ModelLoadError(self._unloadable(err)) from None
        missing = [k for k in info.get("missing_keys", ()) if not k.startswith(self.unused)]
        if missing:
            raise ModelLoadError(
                f"model '{self.model_name}': the weights in the archive lack "
                f"{', '.join(sorted(missing)[:4])}: {self.auto_class} would start them at "
                f"random. {self.missing_hint}"
            )
        self.check_length(getattr(model.config, "max_position_embeddings", None))
        module: torch.nn.Module = model.eval()
        return module

    def load_tokenizer(self) -> Any:
        """Read the archive's tokenizer into ``self.tokenizer``; the ``transformers`` module."""
        # every path below is local; a hub lookup must never happen
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import transformers
        except ModuleNotFoundError as err:
            raise ModelLoadError(
                f"model '{self.model_name}': the text kinds need the package {err.name} "
                "(pip install 'torchserve-kit[hf]')"
            ) from None
        self.artifact("config.json")
        if not has_tokenizer(self.model_dir):
            raise ModelLoadError(
                f"model '{self.model_name}': the archive holds no tokenizer files "
                f"({tokenizer_files()}): every word would read as unknown"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(self.model_dir), local_files_only=True
            )
        except Exception as err:  # transformers raises many types for a broken directory
            raise ModelLoadError(self._unloadable(err)) from None
        return transformers

    def _unloadable(self, err: Exception) -> str:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (
            f"model '{self.model_name}': the Hugging Face files in the archive do not load "
            f"as {self.auto_class}: {first[:300]}"
        )

    def check_length(self, longest: Any) -> None:
        """``max_tokens`` within what the model reads (``max_position_embeddings``)."""
        if isinstance(longest, int) and self.options.max_tokens > longest:
            raise ModelLoadError(
                f"model '{self.model_name}': handler option 'max_tokens' is "
                f"{self.options.max_tokens}; the model reads at most {longest} tokens"
            )

    def request_schema(self) -> dict[str, Any]:
        o = self.options
        return {
            "content_type": "application/json (or text/plain: the whole body is one string)",
            "oneOf": ["string", "list of strings", {"inputs": "string or list of strings"}],
            "limits": f"non-empty strings of at most {o.max_chars} characters and "
            f"{o.max_tokens} tokens; at most {o.max_strings_per_request} strings per request",
        }

    def parse_request(self, payload: Payload) -> TextInput:
        found, single = texts(payload, self.options.max_strings_per_request)
        bounded = [self.bounded(text, single, i) for i, text in enumerate(found)]
        return TextInput(self.token_ids(bounded), single)

    def bounded(self, text: str, single: bool, position: int) -> str:
        """``text`` within ``max_chars``: cut when truncating, else a 413 before tokenizing."""
        limit = self.options.max_chars
        if len(text) <= limit:
            return text
        if self.options.truncate:
            return text[:limit]
        where = "the string" if single else f"string {position}"
        raise PayloadTooLarge(
            f"{where} has {len(text)} characters; the limit is {limit}: shorten or split it"
        )

    def token_ids(self, strings: list[str]) -> list[list[int]]:
        """Token ids per string, special tokens included; a 413 past ``max_tokens``."""
        limit, truncate = self.options.max_tokens, self.options.truncate
        ids: list[list[int]] = self.tokenizer(
            strings, truncation=truncate, max_length=limit if truncate else None
        )["input_ids"]
        for position, tokens in enumerate(ids):
            if len(tokens) > limit:
                where = "the string" if len(strings) == 1 else f"string {position}"
                raise PayloadTooLarge(
                    f"{where} has {len(tokens)} tokens; the limit is {limit} "
                    "(special tokens included): shorten or split it"
                )
        return ids

    def item_cost(self, item: TextInput) -> int:
        return sum(len(ids) for ids in item.ids)

    def preprocess(self, items: list[TextInput]) -> LengthGroups:
        pad_id = int(self.tokenizer.pad_token_id or 0)
        return LengthGroups.build(items, self.options.group_size, pad_id)

    def warmup_items(self, n: int) -> list[TextInput]:
        return [TextInput(self.token_ids(["A warm-up sentence."]), single=True)] * n


class TextEmbeddingHandler(OnnxBackendHandler[TextInput], TextHandler):
    """One vector per string: ``{"embedding": [...]}`` for a string, ``{"embeddings": ...}``
    for a list, with token counts. Its ONNX backends are gated on cosine and neighbours."""

    options_class: ClassVar[type[HandlerOptions]] = EmbeddingOptions
    options: EmbeddingOptions
    output_schema = {
        "embedding": "list of floats (for one string)",
        "embeddings": "list of such lists, in input order (for a list)",
        "tokens": "token count per string, special tokens included",
    }
    gate = EMBEDDING
    int8 = DYNAMIC
    int8_keep_fp32 = (
        r"encoder\.layer\.\d+\.output\.dense",
        r"encoder\.layer\.[2-5]\.intermediate\.dense",
    )
    """Every feed-forward down-projection and the up-projections of layers 2-5: the linear
    layers whose int8 versions cost the most, quantized one at a time. On MiniLM's held-out
    set: all in int8, lowest cosine 0.939; down-projections kept, 0.962; these 10 of 36 kept,
    0.984 (mean 0.9975); the whole feed-forward kept (12), 0.987, but then only the attention
    projections are int8."""
    onnx_inputs = ("input_ids", "attention_mask")
    onnx_outputs = ("last_hidden_state",)
    onnx_dynamic_dims = (0, 1)

    def prepare_backend(self) -> None:
        self.load_tokenizer()
        config = json.loads(self.artifact("config.json").read_text(encoding="utf-8"))
        self.check_length(config.get("max_position_embeddings"))

    def export_module(self) -> torch.nn.Module:
        return _Encoder(super().export_module())

    def export_sample(self) -> tuple[torch.Tensor, ...]:
        sample = self.tokenizer(["a short one", "and a longer sentence"], padding=True)
        return tuple(torch.tensor(sample[name]) for name in self.onnx_inputs)

    def inference(self, batch: LengthGroups) -> list[tuple[TextInput, torch.Tensor]]:
        pooled = torch.cat([self.pool(ids, mask) for ids, mask in batch.groups])
        if self.options.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return list(batch.per_request(pooled))

    def pool(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One vector per row: the mean over real tokens, or the first token's."""
        hidden = first_tensor(self.model(input_ids=input_ids, attention_mask=mask))
        if self.options.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, mask)

    def postprocess(self, outputs: list[tuple[TextInput, torch.Tensor]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for item, rows in outputs:
            tokens = [len(ids) for ids in item.ids]
            rows = check_finite(rows.float())
            if item.single:
                results.append({"embedding": rows[0].tolist(), "tokens": tokens[0]})
            else:
                results.append({"embeddings": rows.tolist(), "tokens": tokens})
        return results


class TextClassifierHandler(TextHandler):
    """Classes per string: ``{"label", "score", "probabilities"}`` for a string,
    ``{"results": [...]}`` for a list."""

    options_class: ClassVar[type[HandlerOptions]] = ClassifierOptions
    options: ClassifierOptions
    auto_class = "AutoModelForSequenceClassification"
    unused = ()
    missing_hint = (
        "This directory holds an encoder without a trained classification head: serve it "
        "with the text-embedding kind, or fine-tune and save a classifier first."
    )
    output_schema = {
        "label": "the best class (for one string)",
        "score": "its probability",
        "probabilities": "class -> probability, best first",
        "results": "one such object per string, in input order (for a list)",
    }

    def load_labels(self) -> list[str] | None:
        labels = super().load_labels()
        if labels is not None:
            return labels
        config = getattr(self.model, "config", None)
        names = getattr(config, "id2label", None) or {}
        ordered = [str(names[i]) for i in sorted(names)]
        generic = all(name == f"LABEL_{i}" for i, name in enumerate(ordered))
        return None if generic or not ordered else ordered

    def inference(self, batch: LengthGroups) -> list[tuple[TextInput, torch.Tensor]]:
        logits = torch.cat(
            [first_tensor(self.model(input_ids=ids, attention_mask=m)) for ids, m in batch.groups]
        )
        return list(batch.per_request(logits))

    def postprocess(self, outputs: list[tuple[TextInput, torch.Tensor]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for item, rows in outputs:
            probabilities = torch.softmax(check_finite(rows.float()), dim=1)
            names = class_names(self.labels, probabilities.shape[1])
            answers = [self._classes(row, names) for row in probabilities.tolist()]
            results.append(answers[0] if item.single else {"results": answers})
        return results

    def _classes(self, row: list[float], names: list[str]) -> dict[str, Any]:
        order = sorted(range(len(row)), key=lambda i: -row[i])
        if self.options.top_k:
            order = order[: self.options.top_k]
        best = order[0]
        return {
            "label": names[best],
            "score": round(row[best], 6),
            "probabilities": {names[i]: round(row[i], 6) for i in order},
        }


class _Encoder(torch.nn.Module):
    """A Hugging Face encoder with the two positional inputs the backends feed, one output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model(input_ids=input_ids, attention_mask=attention_mask))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors over the real (unpadded) tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def texts(payload: Payload, max_strings: int) -> tuple[list[str], bool]:
    """The request's strings and whether it sent one string rather than a list."""
    if payload.content_type.startswith("text/plain") and isinstance(payload.value, str):
        value: Any = payload.value
    else:
        value = payload.json()
    if isinstance(value, dict):
        key = next((k for k in INPUT_KEYS if k in value), None)
        if key is None:
            raise BadRequest(
                f"JSON object needs the key 'inputs' (a string or a list of strings); "
                f"got keys: {brief_list(list(map(str, value))) or 'none'}"
            )
        value = value[key]
    single = isinstance(value, str)
    found = [value] if single else value
    if not isinstance(found, list):
        raise BadRequest(f"expected a string or a list of strings; got {type(value).__name__}")
    if not found:
        raise BadRequest("the list of strings is empty; send at least one string")
    if len(found) > max_strings:
        raise PayloadTooLarge(
            f"the list holds {len(found)} strings; the limit is {max_strings} per request"
        )
    for position, text in enumerate(found):
        where = "the string" if single else f"string {position}"
        if not isinstance(text, str):
            raise BadRequest(f"{where} is {type(text).__name__}; expected a string")
        if not text.strip():
            raise BadRequest(f"{where} is empty; send some text")
    return found, single

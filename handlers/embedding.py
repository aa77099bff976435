"""Sentence embeddings (all-MiniLM-L6-v2): JSON strings in, 384-dim mean-pooled vectors out.

Every file comes from the archive (config.json, model.safetensors, tokenizer files):
nothing is fetched from a model hub, at load or at run time.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from handlers.embedding_options import EmbeddingOptions
from handlers.nets import check_finite
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload, brief_list
from servekit.runtime.errors import BadRequest, ModelLoadError, PayloadTooLarge
from servekit.runtime.text_batching import LengthGroups, TextInput

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Keys in the weights file a BertModel without pooler does not hold (sentence-transformers
# saves the pooler and, from older transformers, the position_ids buffer).
IGNORED_KEYS = ("pooler.", "embeddings.position_ids")
INPUT_KEYS = ("inputs", "input")


class EmbeddingHandler(ToolkitHandler[TextInput]):
    """``"one string"``, ``["a", "list"]`` or ``{"inputs": ...}``; text/plain is one string."""

    options_class = EmbeddingOptions
    options: EmbeddingOptions
    input_schema = {
        "content_type": "application/json (or text/plain: the whole body is one string)",
        "oneOf": ["string", "list of strings", {"inputs": "string or list of strings"}],
        "limits": "non-empty strings; max_chars and max_tokens per string, "
        "max_strings_per_request per list",
    }
    output_schema = {
        "embedding": "list of 384 floats (for one string; L2-normalized by default)",
        "embeddings": "list of such lists, in input order (for a list)",
        "tokens": "token count per string, [CLS] and [SEP] included",
    }

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None

    def load_model(self) -> torch.nn.Module:
        # Belt and braces: every path below is local, but a hub lookup must never happen.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer  # heavy: imported only where it is used

        for name in TOKENIZER_FILES:
            self.artifact(name)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        return self._bert()

    def _bert(self) -> torch.nn.Module:
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel

        config = BertConfig.from_json_file(str(self.artifact("config.json")))
        model = BertModel(config, add_pooling_layer=False)
        try:
            state = load_file(str(self.artifact("model.safetensors")))
        except Exception as err:  # safetensors raises its own types for a broken file
            raise ModelLoadError(
                f"model '{self.model_name}': weights file 'model.safetensors' is broken: {err}"
            ) from err
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEYS)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(IGNORED_KEYS)]
        if missing or unexpected:
            raise ModelLoadError(
                f"model '{self.model_name}': 'model.safetensors' does not fit BertModel "
                f"({config.hidden_size}-dim): missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        module: torch.nn.Module = model
        return module.eval()

    def parse_request(self, payload: Payload) -> TextInput:
        texts, single = _texts(payload, self.options.max_strings_per_request)
        bounded = [self._bounded(text, single, i) for i, text in enumerate(texts)]
        return TextInput(self._token_ids(bounded), single)

    def _bounded(self, text: str, single: bool, position: int) -> str:
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

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        limit, truncate = self.options.max_tokens, self.options.truncate
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=truncate, max_length=limit if truncate else None
        )["input_ids"]
        for position, tokens in enumerate(ids):
            if len(tokens) > limit:
                where = "the string" if len(texts) == 1 else f"string {position}"
                raise PayloadTooLarge(
                    f"{where} has {len(tokens)} tokens; the limit is {limit} "
                    "([CLS] and [SEP] included): shorten or split it"
                )
        return ids

    cost_unit = "tokens"

    def item_cost(self, item: TextInput) -> int:
        return sum(len(ids) for ids in item.ids)

    def preprocess(self, items: list[TextInput]) -> LengthGroups:
        pad_id = int(self.tokenizer.pad_token_id or 0)
        return LengthGroups.build(items, self.options.group_size, pad_id)

    def inference(self, batch: LengthGroups) -> list[tuple[TextInput, torch.Tensor]]:
        pooled = torch.cat([self._embed(ids, mask) for ids, mask in batch.groups])
        if self.options.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return list(batch.per_request(pooled))

    def _embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token embeddings over the real (unpadded) tokens."""
        output = self.model(input_ids=input_ids, attention_mask=mask)
        hidden: torch.Tensor = output.last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def postprocess(self, outputs: list[tuple[TextInput, torch.Tensor]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for item, rows in outputs:
            tokens = [len(ids) for ids in item.ids]
            rows = check_finite(rows)
            if item.single:
                results.append({"embedding": rows[0].tolist(), "tokens": tokens[0]})
            else:
                results.append({"embeddings": rows.tolist(), "tokens": tokens})
        return results

    def warmup_items(self, n: int) -> list[TextInput]:
        return [TextInput(self._token_ids(["A warm-up sentence."]), single=True)] * n


def _texts(payload: Payload, max_strings: int) -> tuple[list[str], bool]:
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
    texts = [value] if single else value
    if not isinstance(texts, list):
        raise BadRequest(f"expected a string or a list of strings; got {type(value).__name__}")
    if not texts:
        raise BadRequest("the list of strings is empty; send at least one string")
    if len(texts) > max_strings:
        raise PayloadTooLarge(
            f"the list holds {len(texts)} strings; the limit is {max_strings} per request"
        )
    for position, text in enumerate(texts):
        where = "the string" if single else f"string {position}"
        if not isinstance(text, str):
            raise BadRequest(f"{where} is {type(text).__name__}; expected a string")
        if not text.strip():
            raise BadRequest(f"{where} is empty; send some text to embed")
    return texts, single

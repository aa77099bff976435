"""Sentence embeddings (all-MiniLM-L6-v2): JSON strings in, 384-dim mean-pooled vectors out.

The toolkit's ``text-embedding`` kind (``servekit.runtime.text``) on the files in the archive
(config.json, model.safetensors, tokenizer files): nothing is fetched from a model hub, at load
or at run time. Its options are the kind's ``EmbeddingOptions``, set in config/minilm.yml.
"""

from __future__ import annotations

from servekit.runtime.text import EmbeddingOptions, TextEmbeddingHandler


class EmbeddingHandler(TextEmbeddingHandler):
    """``"one string"``, ``["a", "list"]`` or ``{"inputs": ...}``; text/plain is one string."""

    options_class = EmbeddingOptions
    options: EmbeddingOptions
    output_schema = {
        "embedding": "list of 384 floats (for one string; L2-normalized by default)",
        "embeddings": "list of such lists, in input order (for a list)",
        "tokens": "token count per string, [CLS] and [SEP] included",
    }

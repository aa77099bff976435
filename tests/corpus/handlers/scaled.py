"""Corpus: a handler with its own options class, in a sibling module."""

from servekit.runtime.base import ToolkitHandler

from tests.corpus.handlers.scaled_options import ScaledOptions


class ScaledHandler(ToolkitHandler[object]):
    options_class = ScaledOptions

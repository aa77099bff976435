"""Corpus: options only running the code would reveal."""

from servekit.runtime.base import ToolkitHandler
from servekit.runtime.options import HandlerOptions


def make() -> type[HandlerOptions]:
    return HandlerOptions


class DynamicHandler(ToolkitHandler[object]):
    options_class = make()

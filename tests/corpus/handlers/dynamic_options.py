"""Corpus: options only running the code would reveal."""

from handlers.base import ToolkitHandler
from handlers.options import HandlerOptions


def make() -> type[HandlerOptions]:
    return HandlerOptions


class DynamicHandler(ToolkitHandler[object]):
    options_class = make()

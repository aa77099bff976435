"""Corpus: a handler whose import has a side effect; the validator must only read it."""

import pathlib

from handlers.digits_options import DigitsOptions
from servekit.runtime.base import ToolkitHandler

pathlib.Path("IMPORTED-BY-THE-VALIDATOR").write_text("the validator ran this handler\n")
raise SystemExit("the validator imported a handler it should only have read")


class RunsCodeHandler(ToolkitHandler[object]):
    options_class = DigitsOptions

"""Corpus: imports an archived model cannot satisfy, and the fallbacks it can."""

from servekit.runtime.base import ToolkitHandler

from .scaled_options import ScaledOptions
from servekit.errors import ToolkitError

try:
    from servekit.bench import stats
except ImportError:  # planned for: not reported
    stats = None


class BadImports(ToolkitHandler[object]):
    options_class = ScaledOptions
    error = ToolkitError

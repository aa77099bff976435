"""The toolkit's exceptions: one base, a few kinds."""

from __future__ import annotations


class ToolkitError(Exception):
    """Base of every error the toolkit raises on purpose."""


class ConfigError(ToolkitError):
    """A config or spec file is wrong; the message names file, key and value."""


class ArchiveError(ToolkitError):
    """An archive could not be built or does not match its spec."""


class ServerError(ToolkitError):
    """A TorchServe instance could not be started, reached or stopped."""


class Unreachable(ServerError):
    """A server gave no answer at all (refused, timed out, reset): ``servekit`` exits 3."""


def os_error_text(err: OSError) -> str:
    """``path: reason`` for a message (``model_store: Permission denied``)."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"

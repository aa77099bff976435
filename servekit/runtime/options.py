"""Typed handler options, read once from the ``handler:`` section of the model config.

Subclass ``HandlerOptions`` as a frozen dataclass to declare a handler's own
options; ``from_section`` rejects unknown keys and wrong types with a message
naming the option, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from servekit.runtime.errors import ModelLoadError

T = TypeVar("T", bound="HandlerOptions")


@dataclasses.dataclass(frozen=True)
class HandlerOptions:
    """Options every toolkit handler understands.

    >>> HandlerOptions.from_section({"warmup": False}).warmup
    False
    """

    warmup: bool = True
    """Run one dummy batch at initialize so the first request is not slow."""

    warmup_batch_size: int = 1
    """How many inputs the warmup batch holds."""

    warmup_in_background: bool = False
    """Warm up after initialize returns: the worker is READY at once, its status 'warming'."""

    degraded_after_errors: int = 5
    """After this many internal errors in a row, a self-test on the warmup inputs decides
    whether the model is 'degraded' (0: never); client errors never count."""

    recheck_seconds: float = 10.0
    """At most one self-test per this many seconds; while degraded, the customized describe
    (readiness probe) re-runs it, so a recovered model is 'ready' again without traffic."""

    recycle_on_sigusr1: bool = True
    """SIGUSR1 makes the worker exit at its next customized describe (recycle_workers.py)."""

    max_batch_cost: int = 0
    """The most work one batch may ask of the model, in the handler's cost unit (tokens for
    text; 0: no limit). Keep a full batch well inside responseTimeout: past it the frontend
    kills the worker and fails the whole batch. Over it alone: 413; past it in a batch: 503."""

    max_response_bytes: int = 6_553_500
    """The largest answer one request may get, as TorchServe encodes it: set it to the server's
    max_response_size (this is its default). A larger answer would kill the worker (the
    frontend drops the connection); it gets a 413 instead."""

    torch_threads: int = 0
    """Torch threads per worker (0: torch's default, one per core, or OMP_NUM_THREADS).
    With several workers, cores / workers keeps them from spinning against each other."""

    @classmethod
    def from_section(cls: type[T], section: Any, where: str = "handler") -> T:
        """Build the options from a mapping (``None`` means all defaults)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ModelLoadError(
                f"model config section '{where}' must be a mapping of options, "
                f"got {type(section).__name__}"
            )
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in fields:
                raise ModelLoadError(_unknown(where, str(key), sorted(fields)))
            values[key] = _coerce(where, key, value, hints[key])
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        """Cross-field and range checks; raise ``ModelLoadError`` naming the option."""
        if self.warmup_batch_size < 1:
            raise ModelLoadError(
                f"handler option 'warmup_batch_size' is {self.warmup_batch_size}; it must be >= 1"
            )
        if self.max_batch_cost < 0:
            raise ModelLoadError(
                f"handler option 'max_batch_cost' is {self.max_batch_cost}; "
                "it must be >= 0 (0: no limit)"
            )
        if self.max_response_bytes < 1024:
            raise ModelLoadError(
                f"handler option 'max_response_bytes' is {self.max_response_bytes}; "
                "it must be >= 1024 (the server's max_response_size)"
            )
        if self.torch_threads < 0:
            raise ModelLoadError(
                f"handler option 'torch_threads' is {self.torch_threads}; "
                "it must be >= 0 (0 keeps torch's default)"
            )
        if not 0 <= self.recheck_seconds <= 86_400:
            raise ModelLoadError(
                f"handler option 'recheck_seconds' is {self.recheck_seconds}; "
                "it must be 0..86400 seconds"
            )
        if self.degraded_after_errors < 0:
            raise ModelLoadError(
                f"handler option 'degraded_after_errors' is {self.degraded_after_errors}; "
                "it must be >= 0 (0 turns it off)"
            )

    @classmethod
    def declared(cls) -> dict[str, str]:
        """Each option's name and type, for metadata and docs."""
        hints = typing.get_type_hints(cls)
        return {f.name: _type_name(hints[f.name]) for f in dataclasses.fields(cls)}


def _unknown(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known options: {', '.join(known)}"
    return f"unknown handler option '{key}' in section '{where}'{hint}"


def _coerce(where: str, key: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) if _is_union(hint) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind in (bool, int, float, str) and type(value) is kind:
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, list):
            item = typing.get_args(kind)[0]
            if all(type(v) is item for v in value):
                return tuple(value)
            if item is float and all(type(v) in (int, float) for v in value):
                return tuple(float(v) for v in value)  # `mean: [0, 0, 0]` as written by hand
    raise ModelLoadError(
        f"handler option '{key}' in section '{where}' is {value!r} "
        f"({type(value).__name__}); expected {_type_name(hint)}"
    )


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))

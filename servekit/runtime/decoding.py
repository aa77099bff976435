"""Turn one request of a TorchServe batch into a ``Payload`` the handler can read.

TorchServe hands a handler one dict per request: the raw body under ``body``
(or ``data``), multipart form fields by name, JSON already parsed (or left as
bytes when it did not parse), ``text/*`` as ``str`` and everything else as bytes.

Every input is untrusted: each step here is linear in the input's size (no
backtracking regex), and every way a body can be wrong ends in a ``RequestError``
that names the problem, never in another exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servekit.runtime.errors import BadRequest, PayloadTooLarge

DEFAULT_FIELDS = ("body", "data")
BASE64_KEYS = ("b64", "base64")
MAX_JSON_DEPTH = 64
"""Arrays and objects nested deeper than this are refused (no model input needs more)."""
MAX_INT_DIGITS = 4300
"""The most digits of an integer the toolkit converts to or from text, anywhere: Python's own
default limit (``sys.get_int_max_str_digits``). Longer JSON integer literals are refused, and
config files refuse integers that long in any form (``servekit.config.limits.MAX_INT_BITS``)."""
BRIEF_CHARS = 40
"""What ``brief`` keeps of a value by default: a request error names a bad value, not echo it."""
_RAW_BINARY_TYPES = ("image/", "application/octet-stream", "audio/", "video/")
_WHITESPACE = b" \t\r\n\x0b\x0c"  # what line-wrapped base64 (the `base64` tool: 76 columns) holds
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BRIEF = BRIEF_CHARS
_EXACT_DIGITS_BITS = 4096  # up to here counting an integer's digits is cheap; beyond, estimated

# A JSON location as a linked list (parent, key), rendered only when an error names it.
_Where = tuple["_Where", str | int] | None


@dataclass(frozen=True)
class Payload:
    """One request's input, as sent: ``value`` is what TorchServe decoded."""

    value: Any
    field: str
    content_type: str = ""

    def json(self) -> Any:
        """The input as a JSON value; bytes and text are parsed here.

        Whatever parsed it, the value is checked: nesting at most ``MAX_JSON_DEPTH``,
        finite numbers only, strings that are valid Unicode (no lone surrogates).
        """
        if isinstance(self.value, (bytes, bytearray)):
            value = _parse_json(self._utf8(self.value))
        elif isinstance(self.value, str) and self.content_type != "application/json":
            value = _parse_json(self.value)
        else:
            value = self.value  # TorchServe already decoded application/json
        _check_json(value)
        return value

    def raw_bytes(self, max_bytes: int | None = None) -> bytes:
        """The input as bytes: raw bodies as they are, base64 decoded wherever it is used."""
        data = self._to_bytes(self.value)
        if not data:
            raise BadRequest(f"field '{self.field}' is empty; send the input bytes")
        if max_bytes is not None and len(data) > max_bytes:
            raise PayloadTooLarge(
                f"field '{self.field}' holds {len(data)} bytes; the limit is {max_bytes}"
            )
        return data

    def _to_bytes(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            if self.content_type.startswith(_RAW_BINARY_TYPES) or not _looks_like_base64(value):
                return bytes(value)
            return _b64decode(bytes(value), self.field)
        if isinstance(value, str):
            return _b64decode(_ascii(value, self.field), self.field)
        if isinstance(value, Mapping):
            for key in BASE64_KEYS:
                if isinstance(value.get(key), str):
                    where = f"{self.field}.{key}"
                    return _b64decode(_ascii(value[key], where), where)
            raise BadRequest(
                f"JSON object in '{self.field}' has no base64 field; send raw bytes or "
                f'{{"b64": "<base64>"}}'
            )
        raise BadRequest(
            f"field '{self.field}' holds JSON {type(value).__name__}; send raw bytes, "
            f'base64 text or {{"b64": "<base64>"}}'
        )

    def _utf8(self, data: bytes | bytearray) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRequest(
                f"field '{self.field}' is not UTF-8 text (bad byte at offset {err.start})"
            ) from None


def select_payload(
    request: Mapping[str, Any], fields: tuple[str, ...], allow_empty: bool = False
) -> Payload:
    """Pick the input field of one request; a missing or empty input is a ``BadRequest``."""
    if not isinstance(request, Mapping) or (allow_empty and not request):
        if allow_empty:
            return Payload(value=None, field="body")
        raise BadRequest("request carries no input fields")
    name = next((f for f in fields if f in request), None)
    if name is None:
        if len(request) != 1:
            listed = brief_list(sorted(map(str, request))) or "none"
            raise BadRequest(
                f"cannot tell which form field holds the input (fields: {listed}); "
                f"name it one of: {', '.join(fields)}"
            )
        name = next(iter(request))
    value = request[name]
    if not allow_empty and (
        value is None or (isinstance(value, (bytes, bytearray, str)) and not value.strip())
    ):
        raise BadRequest("request body is empty; send the model input")
    return Payload(value=value, field=str(name))


def brief(
    value: Any, limit: int = BRIEF_CHARS, *, written: bool = False, length: bool = False
) -> str:
    """``value`` shortened for a message that names it: the one way the toolkit echoes an
    untrusted value (request errors, queue messages, config findings), in bounded time and length.

    An integer of more than 128 bits says how many digits it has; a list or dict is shown elided
    (20 items, 4 levels) or, when that does not fit in ``limit``, says how many items it holds;
    other text longer than ``limit`` is cut to ``limit`` characters ending in ``...``.

    ``written=True`` shows a config value as its file writes it: a string bare unless quotes
    show its type (empty, padded, all digits), ``true``, ``false``, ``null``; otherwise the
    value's Python repr, as a request or queue message held it. ``length=True`` says after
    the cut how long the whole text was: ``'xx... (1002 characters)'``.

    >>> brief(10**400), brief(10**5000)
    ('an integer of 401 digits', 'an integer of about 5000 digits')
    >>> brief("x" * 50), brief("x" * 50, 10, length=True)
    ("'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...", "'xxxxxx... (52 characters)")
    >>> brief([1] * 100), brief(" 4", written=True), brief("four", written=True)
    ('a JSON array of 100 items', "' 4'", 'four')
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return _huge_int(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        text = _ELIDED.repr(value)
        return text if len(text) <= limit else _items(value, written)
    text = _as_written(value) if written else repr(value)
    return cut(text, limit, length)


def cut(text: str, limit: int = BRIEF_CHARS, length: bool = False) -> str:
    """``text`` when it fits in ``limit``, else its first ``limit`` characters ending in ``...``
    (and, with ``length``, how long it was): how ``brief`` cuts, for text already rendered."""
    if len(text) <= limit:
        return text
    shortened = f"{text[: max(limit - 3, 1)]}..."
    return f"{shortened} ({len(text)} characters)" if length else shortened


def _huge_int(value: int) -> str:
    bits = value.bit_length()
    if bits <= _EXACT_DIGITS_BITS:
        return f"an integer of {len(str(abs(value)))} digits"
    return f"an integer of about {int(bits * math.log10(2))} digits"


def _as_written(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if not value or value != value.strip() or value.isdigit() else value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _items(value: Any, written: bool) -> str:
    kinds: dict[type, str] = {list: "array", dict: "object"}
    if written:
        kinds = {list: "list", dict: "mapping"}
    kind = next((name for t, name in kinds.items() if isinstance(value, t)), None)
    named = (kind if written else f"JSON {kind}") if kind else type(value).__name__
    return f"a {named} of {len(value)} items"


class _Elided(reprlib.Repr):
    """``reprlib.Repr`` that names a huge int instead of converting it (Python refuses to)."""

    def repr_int(self, x: int, level: int) -> str:
        return _huge_int(x) if x.bit_length() > 128 else super().repr_int(x, level)


_ELIDED = _Elided()
_ELIDED.maxlevel, _ELIDED.maxlist, _ELIDED.maxdict, _ELIDED.maxtuple = 4, 20, 20, 20
_ELIDED.maxset = _ELIDED.maxfrozenset = 20
_ELIDED.maxstring = _ELIDED.maxother = _ELIDED.maxlong = 80


def brief_list(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, each cut short; ``(+N more)`` for the rest."""
    shown = ", ".join(n if len(n) <= _BRIEF else f"{n[: _BRIEF - 3]}..." for n in names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except RecursionError:  # the C scanner recurses once per level of nesting
        raise _too_deep() from None


def _json_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    limit = min(MAX_INT_DIGITS, sys.get_int_max_str_digits() or MAX_INT_DIGITS)
    if digits > limit:
        raise BadRequest(
            f"body holds a JSON integer of {digits} digits; at most {limit} are accepted"
        )
    return int(literal)


def _check_json(value: Any) -> None:
    """Depth, finite numbers, valid strings: a fast walk, then, only for a value that
    fails, a second one that names where (building paths for every node of a 6 MB array
    cost 6 s per request, enough for a batch of them to outlast responseTimeout)."""
    if _json_faulty(value):
        _locate_json_fault(value)


def _json_faulty(value: Any) -> bool:
    """Whether ``value`` breaks a rule of ``_check_json``, without recursion or paths."""
    if not isinstance(value, (list, dict)):
        return _scalar_faulty(value)
    stack: list[tuple[list[Any] | dict[Any, Any], int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            return True
        if isinstance(node, dict):
            if any(_scalar_faulty(str(key)) for key in node):
                return True
            children: Any = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is list or kind is dict:
                stack.append((child, depth + 1))
            elif (
                kind is not int
                and kind is not bool
                and child is not None
                and (_scalar_faulty(child))
            ):
                return True
    return False


def _scalar_faulty(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _locate_json_fault(value: Any) -> None:
    """Walk a decoded JSON value without recursion, raising a ``BadRequest`` naming where."""
    stack: list[tuple[Any, int, _Where]] = [(value, 0, None)]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, float) and not math.isfinite(node):
            shown = "NaN" if math.isnan(node) else "Infinity (or beyond +-1.8e308)"
            raise BadRequest(
                f"JSON number at {_render(where)} is {shown}; numbers must be finite "
                "(NaN and Infinity are not JSON)"
            )
        elif isinstance(node, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise _too_deep()
            if isinstance(node, dict):
                for key, child in node.items():
                    _check_text(str(key), where)
                    stack.append((child, depth + 1, (where, str(key))))
            else:
                stack.extend((child, depth + 1, (where, i)) for i, child in enumerate(node))


def _check_text(text: str, where: _Where) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(
            f"JSON string at {_render(where)} holds a lone surrogate "
            f"(\\u{ord(text[err.start]):04x} at character {err.start}); "
            "escape characters outside the BMP as a surrogate pair, or send them as UTF-8"
        ) from None


def _render(where: _Where) -> str:
    """``$``, ``$.features[2]``, ... (JSONPath) for a location kept as (parent, key) links."""
    keys: list[str | int] = []
    while where is not None:
        where, key = where
        keys.append(key)
    parts = (f"[{k}]" if isinstance(k, int) else f".{k[:_BRIEF]}" for k in reversed(keys))
    return "$" + "".join(parts)


def _too_deep() -> BadRequest:
    return BadRequest(
        f"JSON nested too deep; at most {MAX_JSON_DEPTH} levels of arrays and objects"
    )


def _looks_like_base64(data: bytes | bytearray) -> bool:
    """Base64 alphabet, optional ``=`` padding and whitespace only: linear, no regex."""
    compact = bytes(data).translate(None, _WHITESPACE)
    body = compact.rstrip(b"=")
    return (
        bool(body) and len(compact) - len(body) <= 2 and not body.translate(None, _BASE64_ALPHABET)
    )


def _ascii(text: str, where: str) -> bytes:
    head, comma, rest = text.partition(",")
    if comma and head[:5].lower() == "data:" and head.lower().endswith(";base64"):
        text = rest  # a data URL: data:image/png;base64,<base64>
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as err:
        raise BadRequest(
            f"'{where}' is not valid base64 (non-ASCII character at {err.start})"
        ) from None


def _b64decode(data: bytes, where: str) -> bytes:
    try:
        decoded = base64.b64decode(data.translate(None, _WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{where}' is not valid base64") from None
    if not decoded:
        raise BadRequest(f"'{where}' decodes to no bytes")
    return decoded

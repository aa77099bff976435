"""Read a Java ``.properties`` file the way ``java.util.Properties.load`` does, with line numbers.

Comments start with ``#`` or ``!``; a key ends at the first unescaped ``=``, ``:``
or blank; a line ending in an odd number of backslashes continues on the next
one (its leading blanks dropped); ``\\t \\n \\r \\f \\uXXXX`` are escapes and a
backslash before any other character keeps that character. Trailing blanks of a
value are kept, as Java keeps them.

    >>> [(e.key, e.value, e.line) for e in parse_properties("a = 1\\n# c\\nb:2 \\\\\\n  3\\n")]
    [('a', '1', 1), ('b', '2 3', 3)]
"""

from __future__ import annotations

import dataclasses

from servekit.errors import ConfigError

_BLANKS = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``key=value`` of a properties file; ``line`` is where the key starts (1-based)."""

    key: str
    value: str
    line: int


def parse_properties(text: str) -> list[Entry]:
    """Every entry in file order (duplicates kept); ``ConfigError`` on a bad ``\\u`` escape."""
    entries = []
    for line_no, logical in _logical_lines(text):
        key, value = _split(logical)
        entries.append(Entry(_unescape(key, line_no), _unescape(value, line_no), line_no))
    return entries


def property_values(text: str) -> dict[str, str]:
    """``key -> value`` as Java's ``Properties`` holds them: a repeated key keeps its last value.

    >>> property_values("a=1\\n! c\\nb : x \\na=2\\n")
    {'a': '2', 'b': 'x '}
    """
    return {entry.key: entry.value for entry in parse_properties(text)}


def _logical_lines(text: str) -> list[tuple[int, str]]:
    natural = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    result: list[tuple[int, str]] = []
    index = 0
    while index < len(natural):
        start = index
        line = natural[index].lstrip(_BLANKS)
        index += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and index < len(natural):
            line = line[:-1] + natural[index].lstrip(_BLANKS)
            index += 1
        if _continues(line):
            line = line[:-1]
        result.append((start + 1, line))
    return result


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _split(line: str) -> tuple[str, str]:
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=:" or char in _BLANKS:
            break
        index += 1
    key, rest = line[:index], line[index:]
    rest = rest.lstrip(_BLANKS)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_BLANKS)
    return key, rest


def _unescape(raw: str, line_no: int) -> str:
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "\\" or index + 1 >= len(raw):
            out.append(char)
            index += 1
            continue
        nxt = raw[index + 1]
        if nxt == "u":
            digits = raw[index + 2 : index + 6]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ConfigError(
                    f"line {line_no}: malformed \\uxxxx escape '\\u{digits}'; "
                    "Java refuses to load the file (write four hex digits, or '\\\\u')"
                )
            out.append(chr(int(digits, 16)))
            index += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        index += 2
    return "".join(out)


LOG4J_OPTION = "-Dlog4j.configurationFile="


def log_config_file(word: str) -> str | None:
    """The local file (not a URI) that one vmargs word ``-Dlog4j.configurationFile=...`` names.

    >>> log_config_file("-Dlog4j.configurationFile=config/log4j2.xml"), log_config_file("-Xmx2g")
    ('config/log4j2.xml', None)
    """
    path = word.removeprefix(LOG4J_OPTION) if word.startswith(LOG4J_OPTION) else ""
    return path if path and ":" not in path else None

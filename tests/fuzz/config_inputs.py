"""Inputs for the config-file fuzz targets: config-shaped text with hostile parts, and the
promise every validator keeps (findings, each a one-line text and JSON, within bounds)."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import strategies as st

from servekit.config import schema
from servekit.config.findings import Finding

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "corpus"
MAX_PEAK = 64 << 20  # bytes of Python allocations while validating one file of <= 200 KB

# Scalars that broke, or could break, a YAML or properties reader.
HOSTILE_SCALARS = [
    "2024-01-01",
    "2024-02-30",
    "2001-12-14t21:59:43.10-05:00",
    "9" * 5000,
    "9" * 40,
    "-" + "9" * 20,
    "0x_",
    "0b",
    "1_000",
    "1e400",
    ".nan",
    "-.inf",
    "~",
    "!!binary a",
    "!!python/object:os.system x",
    '"\\ud800"',
    '"\\udc80x"',
    "'",
    "*undefined",
    "&a [*a]",
    "[" * 200 + "]" * 200,
    "{" * 100,
    "\\u12",
    "\\",
    "$$HOME$$",
    "$$NOPE_NOT_SET$$",
    "(.|.|.)*(.)(?!.)\\\\2",
    "a{99999999999}",
    "(" * 300,
    # found by the second review: integer forms whose digits are not 0-9, and regex bombs
    "0x" + "f" * 3600,
    ":".join(["1"] * 3000),
    "0b" + "1" * 15000,
    "(?:" * 14 + "a" + "){2}" * 14,
    ",".join(["https?://(?:.*?){7}[0-9]"] * 30),
]
# Keys YAML reads as something other than a string.
NON_STRING_KEYS = ["1", "2024-01-01", "null", "true", ".nan", "0x1f", "1:30", "~"]


def keys() -> st.SearchStrategy[str]:
    known = sorted({*schema.PROPERTIES, *schema.MODEL_CONFIG, *schema.SPEC, "models"})
    return (
        st.sampled_from(known) | st.text(min_size=1, max_size=12) | st.sampled_from(NON_STRING_KEYS)
    )


def values() -> st.SearchStrategy[str]:
    return (
        st.sampled_from(HOSTILE_SCALARS)
        | st.text(st.characters(exclude_categories=()), max_size=30)
        | st.integers().map(str)
        | st.sampled_from(["true", "false", "0", "1", "-1", "8", "127.0.0.1", "http://0.0.0.0:1"])
    )


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file with bytes flipped, cut, repeated or spliced in."""
    data = bytearray(draw(st.sampled_from(seeds)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 8))):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            del data[at : at + rng.randrange(1, 16)]
        elif op == 2:
            data[at:at] = data[at : at + rng.randrange(1, 32)] * rng.randrange(2, 50)
        else:
            data[at:at] = rng.choice(HOSTILE_SCALARS).encode("utf-8", "surrogatepass")
    return bytes(data)


def seeds(suffix: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.rglob(f"*{suffix}")) if p.stat().st_size < 20_000]


@contextmanager
def bounded_memory(limit: int = MAX_PEAK) -> Iterator[None]:
    """Fail when the block allocates more than ``limit`` bytes at its peak."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak >> 20} MB"


def keeps_the_promise(validate: Callable[[], list[Finding]], path: Path) -> None:
    """Findings for ``path`` only, each printable on one line and as JSON."""
    with bounded_memory():
        findings = validate()
    assert isinstance(findings, list)
    for finding in findings:
        assert isinstance(finding, Finding)
        assert finding.file == str(path)
        line = finding.text()
        assert "\n" not in line and "\r" not in line
        line.encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogates left
        json.loads(json.dumps(finding.as_dict()))

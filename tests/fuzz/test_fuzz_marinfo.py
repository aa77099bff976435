"""The archive reader, for any bytes: a ``MarInfo`` or an ``ArchiveError`` naming the file,
never another exception, in bounded memory. Inputs are real archives (a small one built
here, and ``model_store/digits.mar`` when built) with bytes flipped, cut or header fields
rewritten (flags, compression method, sizes, offsets)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.config.findings import jsonable, printable
from servekit.errors import ArchiveError
from servekit.serve.marinfo import MarInfo, read_mar
from servekit.serve.reproducible import MANIFEST
from tests.fuzz.config_inputs import HOSTILE_SCALARS, NON_STRING_KEYS, ROOT, bounded_memory
from tests.fuzz.kept import corpus
from tests.unit.test_marinfo import small_mar

pytestmark = pytest.mark.timeout(300)
SMALL = small_mar({"weights.bin": bytes(range(256)) * 64, "extra.txt": b"x" * 1000})
DIGITS = ROOT / "model_store" / "digits.mar"
SEEDS = [SMALL, *([DIGITS.read_bytes()] if DIGITS.is_file() else [])]
# Where a field sits, from the start of a local (PK\3\4) or central (PK\1\2) header.
FIELDS = {
    b"PK\x03\x04": [(6, "H"), (8, "H"), (14, "I"), (18, "I"), (22, "I"), (26, "H"), (28, "H")],
    b"PK\x01\x02": [(8, "H"), (10, "H"), (16, "I"), (20, "I"), (24, "I"), (28, "H"), (42, "I")],
    b"PK\x05\x06": [(8, "H"), (10, "H"), (12, "I"), (16, "I"), (20, "H")],
}
EDGE_VALUES = [0, 1, 8, 12, 14, 99, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 1 << 30]


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["field", "field", "flip", "cut", "splice"]))
        if op == "field":
            magic = rng.choice(list(FIELDS))
            starts = [i for i in range(len(data)) if data.startswith(magic, i)][:200]
            if starts:
                at = rng.choice(starts)
                offset, kind = rng.choice(FIELDS[magic])
                if at + offset + struct.calcsize(kind) <= len(data):
                    value = rng.choice(EDGE_VALUES) & (0xFFFF if kind == "H" else 0xFFFFFFFF)
                    struct.pack_into("<" + kind, data, at + offset, value)
        elif op == "flip":
            for _ in range(rng.randrange(1, 16)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == "cut":
            del data[rng.randrange(len(data)) :]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 64))
        if not data:
            break
    return bytes(data)


def check(tmp: Path, data: bytes) -> None:
    mar = tmp / "fuzz.mar"
    mar.write_bytes(data)
    with bounded_memory(32 << 20):
        try:
            info = read_mar(mar)
        except ArchiveError as err:
            assert str(mar) in str(err)
            return
    assert isinstance(info, MarInfo)
    assert all(entry.size >= 0 and len(entry.sha256) == 64 for entry in info.files.values())
    # what inspect_mar prints: strict JSON, and names that cannot forge lines or escapes
    json.dumps(jsonable({"manifest": info.manifest, "config": info.model_config}), allow_nan=False)
    assert all(printable(name).isprintable() for name in info.files)


@st.composite
def metadata(draw: st.DrawFn) -> bytes:
    """A well-formed archive whose manifest, model config and entry names are hostile."""
    value = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", '"x"', "[[[]]]"]))
    manifest = (
        '{"model": {"modelName": "tiny", "configFile": "model-config.yml", "x": ' + value + "}}"
    )
    key = draw(st.sampled_from([*NON_STRING_KEYS, "a", '"k\\n\\x1b"']))
    scalar = draw(st.sampled_from(HOSTILE_SCALARS[:20]))
    name = draw(st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=12))
    return small_mar(
        {MANIFEST: manifest.encode(), "model-config.yml": f"{key}: {scalar}\n".encode(), name: b"x"}
    )


@given(data=archives() | metadata() | st.binary(max_size=200))
@example(data=small_mar({MANIFEST: b'{"model": {"modelName": "t", "x": NaN}, "y": Infinity}'}))
@example(data=small_mar({"model-config.yml": b"2024-01-01: 1\na: .nan\n1: 2\n"}))
@example(data=small_mar({"evil\nmatches its spec\n\x1b[31mred": b"x"}))
@example(data=SMALL[: len(SMALL) // 2])
@example(data=b"PK\x05\x06" + bytes(18))
@example(data=b"PK\x03\x04" + bytes(26))
def test_archive_reader_keeps_its_promise(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, data)


@pytest.mark.parametrize("kept", corpus("marinfo"), ids=lambda p: p.name)
def test_kept_inputs(fuzz_dir: Path, kept: Path) -> None:
    check(fuzz_dir, kept.read_bytes())


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-marinfo")

"""servekit inspect (servekit.serve.marinfo) on broken and hostile archives: a clean error naming
the file and the problem (exit 1), never a traceback, and entries streamed, never held whole."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from servekit.errors import ArchiveError
from servekit.serve.marinfo import read_mar
from servekit.serve.reproducible import MANIFEST

ROOT = Path(__file__).resolve().parent.parent.parent
INSPECT = [sys.executable, "-m", "servekit.cli", "inspect"]
GOOD_MANIFEST = {
    "createdOn": "01/01/1980 00:00:00",
    "runtime": "python",
    "model": {
        "modelName": "tiny",
        "handler": "tiny.py",
        "modelVersion": "1.0",
        "configFile": "model-config.yml",
    },
    "archiverVersion": "0.12.0",
}


def small_mar(
    files: dict[str, bytes] | None = None, compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """A minimal archive: manifest, model config, handler (``files`` replaces or adds)."""
    entries = {
        MANIFEST: json.dumps(GOOD_MANIFEST).encode(),
        "model-config.yml": b"batchSize: 2\n",
        "tiny.py": b"class Tiny:\n    pass\n",
        **(files or {}),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def local_header_offsets(data: bytes) -> list[int]:
    offsets, start = [], 0
    while (found := data.find(b"PK\x03\x04", start)) >= 0:
        offsets.append(found)
        start = found + 4
    return offsets


def central_offsets(data: bytes) -> list[int]:
    offsets, start = [], 0
    while (found := data.find(b"PK\x01\x02", start)) >= 0:
        offsets.append(found)
        start = found + 4
    return offsets


def set_flag_encrypted(data: bytes) -> bytes:
    out = bytearray(data)
    for at in local_header_offsets(data):
        out[at + 6] |= 1
    for at in central_offsets(data):
        out[at + 8] |= 1
    return bytes(out)


def set_method(data: bytes, method: int) -> bytes:
    out = bytearray(data)
    for at in local_header_offsets(data):
        struct.pack_into("<H", out, at + 8, method)
    for at in central_offsets(data):
        struct.pack_into("<H", out, at + 10, method)
    return bytes(out)


def corrupt_deflate(data: bytes) -> bytes:
    out = bytearray(data)
    at = local_header_offsets(data)[-1]  # the last entry: tiny.py
    name_len, extra_len = struct.unpack_from("<HH", out, at + 26)
    body = at + 30 + name_len + extra_len
    out[body : body + 4] = b"\xff\xff\xff\xff"
    return bytes(out)


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "not a zip": (lambda: b"not a zip at all", "not a readable .mar (zip) file"),
    "truncated": (lambda: small_mar()[:-30], "not a readable .mar (zip) file"),
    "bad deflate data": (lambda: corrupt_deflate(small_mar()), "tiny.py is corrupt"),
    "encrypted flag": (lambda: set_flag_encrypted(small_mar()), "is encrypted"),
    "unknown compression": (lambda: set_method(small_mar(), 99), "compression method 99"),
    "bzip2": (lambda: small_mar(compression=zipfile.ZIP_BZIP2), "compression method 12"),
    "manifest a list": (lambda: small_mar({MANIFEST: b"[1, 2]"}), "not a .mar manifest"),
    "manifest model a string": (
        lambda: small_mar({MANIFEST: b'{"model": "tiny"}'}),
        "not a .mar manifest",
    ),
    "manifest not JSON": (lambda: small_mar({MANIFEST: b"{oops"}), "is not JSON"),
    "manifest deep": (lambda: small_mar({MANIFEST: b"[" * 100_000}), "is not JSON"),
    "manifest name path": (
        lambda: small_mar({MANIFEST: json.dumps({"model": {"modelName": "../../etc/x"}}).encode()}),
        "not a model name",
    ),
    "config alias bomb": (
        lambda: small_mar(
            {
                "model-config.yml": b"a: &a [x,x,x,x,x,x,x,x,x]\n"
                + b"".join(
                    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n".encode()
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
                )
            }
        ),
        "not valid YAML",
    ),
    "config a list": (lambda: small_mar({"model-config.yml": b"- 1\n"}), "not a mapping"),
    "no manifest": (
        lambda: small_mar({MANIFEST: b""}).replace(
            b"MAR-INF/MANIFEST.json", b"MAR-INF/MANIFEST.jsoo"
        ),
        "no MAR-INF/MANIFEST.json",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_archive_is_a_clean_error(tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    mar = tmp_path / "broken.mar"
    mar.write_bytes(make())
    with pytest.raises(ArchiveError, match=str(mar)) as caught:
        read_mar(mar)
    assert message in str(caught.value)
    for flags in ([], ["--json"]):
        done = subprocess.run(
            [*INSPECT, *flags, str(mar)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith(f"servekit inspect: error: {mar}") and message in done.stderr


def test_a_zip_bomb_is_streamed_not_held(tmp_path: Path) -> None:
    # 200 MB of zeros deflate to about 200 KB: reading it must not cost 200 MB.
    mar = tmp_path / "bomb.mar"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in [
            (MANIFEST, json.dumps(GOOD_MANIFEST).encode()),
            ("model-config.yml", b"batchSize: 2\n"),
        ]:
            archive.writestr(name, data)
        with archive.open("weights.bin", "w", force_zip64=True) as out:
            for _ in range(200):
                out.write(zeros)
    assert mar.stat().st_size < 400_000
    tracemalloc.start()
    try:
        info = read_mar(mar, max_ratio=10_000)  # the default refuses it: see the test below
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.files["weights.bin"].size == 200 << 20
    assert peak < 16 << 20, f"peak {peak >> 20} MB while reading a {mar.stat().st_size} B archive"


def test_declared_sizes_over_the_budget_are_refused_before_reading(tmp_path: Path) -> None:
    mar = tmp_path / "big.mar"
    mar.write_bytes(small_mar({"weights.bin": bytes(4096)}))
    with pytest.raises(ArchiveError, match="a zip bomb"):
        read_mar(mar, max_total=1024)


# ----- found by the second hostile review ---------------------------------------------------
def inspect(mar: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INSPECT, *flags, str(mar)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def strict_json(text: str) -> object:
    """Parse as a strict parser would: NaN, Infinity and -Infinity are not JSON."""

    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("files", "where"),
    [
        (  # NaN and Infinity in the manifest: json.loads reads them, json.dumps writes them
            {
                MANIFEST: b'{"model": {"modelName": "tiny", "configFile": "model-config.yml",'
                b' "x": NaN}, "y": -Infinity}'
            },
            "manifest",
        ),
        ({"model-config.yml": b"a: .nan\nb: [.inf, -.inf]\n"}, "model_config"),
    ],
)
def test_json_output_is_strict_json(tmp_path: Path, files: dict[str, bytes], where: str) -> None:
    mar = tmp_path / "nan.mar"
    mar.write_bytes(small_mar(files))
    done = inspect(mar, "--json")
    assert "Traceback" not in done.stderr
    report = strict_json(done.stdout)
    assert isinstance(report, dict) and "NaN" in json.dumps(report[where])


@pytest.mark.parametrize("config", [b"2024-01-01: 1\n", b"a: 1\n1: 2\nnull: 3\ntrue: 4\n"])
@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_model_config_keys_that_are_not_strings(
    tmp_path: Path, config: bytes, flags: list[str]
) -> None:
    mar = tmp_path / "keys.mar"
    mar.write_bytes(small_mar({"model-config.yml": config}))
    done = inspect(mar, *flags)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    if flags:
        keys = strict_json(done.stdout)["model_config"]  # type: ignore[index]
        assert "1" in keys or "2024-01-01" in keys
    else:
        assert "model config:" in done.stdout


def test_text_output_escapes_names_and_keys(tmp_path: Path) -> None:
    evil = "evil\nmatches its spec\n\x1b[31mred"
    mar = tmp_path / "esc.mar"
    mar.write_bytes(small_mar({evil: b"x", "model-config.yml": b'"k\\nforged: 1\\u001b[0m": 2\n'}))
    done = inspect(mar)
    assert "\x1b" not in done.stdout
    assert "matches its spec" not in done.stdout.splitlines()
    assert "evil\\nmatches its spec\\n\\x1b[31mred" in done.stdout
    assert not any(line.startswith("forged") for line in done.stdout.splitlines())


def test_a_high_compression_ratio_is_refused_before_reading(tmp_path: Path) -> None:
    mar = tmp_path / "ratio.mar"
    mar.write_bytes(small_mar({"zeros.bin": bytes(8 << 20)}))  # about 1000x
    with pytest.raises(ArchiveError, match=r"over 200x \(a zip bomb\?\)"):
        read_mar(mar)


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    # Two central-directory records pointing at one local entry: its data counted twice.
    data = small_mar({"weights.bin": bytes(1000)})
    end = data.rfind(b"PK\x05\x06")
    central_at = struct.unpack("<I", data[end + 16 : end + 20])[0]
    record_at = data.rfind(b"PK\x01\x02", central_at, end)  # weights.bin, the last record
    record = data[record_at:end]
    twin = record.replace(b"weights.bin", b"weights.biN")
    count = struct.unpack("<H", data[end + 10 : end + 12])[0] + 1
    size = end - central_at + len(twin)
    tail = data[end : end + 8] + struct.pack("<HHII", count, count, size, central_at)
    mar = tmp_path / "overlap.mar"
    mar.write_bytes(data[:end] + twin + tail + data[end + 20 :])
    with pytest.raises(ArchiveError, match="overlaps"):
        read_mar(mar)


def test_json_errors_are_a_json_object_on_stdout_too(tmp_path: Path) -> None:
    mar = tmp_path / "broken.mar"
    mar.write_bytes(b"not a zip")
    done = inspect(mar, "--json")
    assert done.returncode == 1
    report = strict_json(done.stdout)
    assert report == {"file": str(mar), "matches_spec": False, "error": report["error"]}  # type: ignore[index]
    assert "not a readable .mar" in report["error"]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["long", "fifo", "dir", "device"])
def test_a_path_that_is_not_a_file_is_a_usage_error_naming_what_it_is(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "x.mar"
    expected = {
        "long": "too long",
        "fifo": "a named pipe (FIFO)",
        "dir": "a directory",
        "device": "a character device",
    }[kind]
    if kind == "long":
        path = tmp_path / ("a" * 300 + ".mar")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    for flags in ([], ["--json"]):
        done = inspect(path, *flags)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and expected in done.stderr
        assert "no such file" not in done.stderr
        if flags:
            assert expected in strict_json(done.stdout)["error"]  # type: ignore[index]

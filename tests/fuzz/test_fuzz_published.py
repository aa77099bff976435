"""A worker's published ``<pid>.json`` under fuzzing (``servekit.runtime.stats.read_published``).

The file is another process's: cut mid-write, stale, or anything. The promise, for any bytes and
any JSON value in it: ``None`` or a ``Published`` whose ``status`` is a handler status or
``"unknown"``, ``leaving`` is ``None``, ``"recycle"`` or ``"retire"``, and ``requests`` an
integer (never a bool) or ``None``; a field of the right type is kept as written; never an
exception, quickly (JSON nested past the recursion limit included).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.runtime.stats import HANDLER_STATUSES, LEAVING, Published, read_published

pytestmark = pytest.mark.fuzz

SECONDS = 0.5  # per file, on a loaded 2-core machine; a read takes microseconds
PID = 4242

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([*HANDLER_STATUSES, *LEAVING, "unknown", "READY"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "pid": json_values,
        "requests": json_values,
        "errors": json_values,
        "status": json_values,
        "leaving": json_values,
        "time": json_values,
    },
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("published")


def read(directory: Path, content: bytes) -> Published | None:
    (directory / f"{PID}.json").write_bytes(content)
    started = time.perf_counter()
    got = read_published(directory, PID)
    assert time.perf_counter() - started < SECONDS
    return got


def check(got: Published | None) -> None:
    if got is None:
        return
    assert got.status in (*HANDLER_STATUSES, "unknown")
    assert got.leaving in (None, *LEAVING)
    assert got.requests is None or (type(got.requests) is int)


@given(st.binary(max_size=400))
@example(b"")
@example(b"\xef\xbb\xbf{}")  # a BOM
@example(b'{"status": "ready", "requests": 1' + b"0" * 5000 + b"}")  # past int's digit limit
@example(b'{"status": "ready"')
@example(b"\x00" * 10)
def test_any_bytes(directory: Path, content: bytes) -> None:
    check(read(directory, content))


@given(json_values)
def test_any_json_value(directory: Path, value: object) -> None:
    check(read(directory, json.dumps(value).encode()))


@given(documents)
@example({"status": "ready", "requests": True, "leaving": "recycle"})
@example({"status": ["ready"], "requests": 1.0, "leaving": {"recycle": 1}})
@example({"requests": 10**400})
def test_any_document(directory: Path, document: dict[str, object]) -> None:
    got = read(directory, json.dumps(document).encode())
    assert got is not None  # any JSON object is a reading, its wrong fields absent
    check(got)
    status, requests, leaving = (document.get(k) for k in ("status", "requests", "leaving"))
    if status in HANDLER_STATUSES:
        assert got.status == status
    if type(requests) is int:
        assert got.requests == requests
    if leaving in LEAVING:
        assert got.leaving == leaving

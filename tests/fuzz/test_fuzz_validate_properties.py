"""The config.properties validator, for any file: findings, never an exception, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.config.validate import validate_paths
from tests.fuzz.config_inputs import ROOT, keeps_the_promise, keys, mutated, seeds, values
from tests.fuzz.kept import corpus

pytestmark = pytest.mark.timeout(300)


@st.composite
def properties_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(keys(), st.sampled_from(["=", ":", " ", "\\\n="]), values()),
                          max_size=12))  # fmt: skip
    text = "\n".join(f"{k}{sep}{v}" for k, sep, v in lines)
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, "surrogatepass" if encoding == "utf-8" else "replace")


def check(tmp: Path, data: bytes) -> None:
    path = tmp / "fuzz.properties"
    path.write_bytes(data)
    keeps_the_promise(lambda: validate_paths([path], ROOT), path)


@given(data=properties_files() | mutated(seeds(".properties")) | st.binary(max_size=400))
@example(data=b"job_queue_size=" + b"9" * 5000)
@example(data=b"models=" + b"[" * 100_000)
@example(data=b'models={"a":{"1":{"batchSize":' + b"9" * 5000 + b"}}}")
@example(data=b"\\ud800=1\nvmargs=-Dlog4j.configurationFile=a\x00b")
@example(data=b"allowed_urls=(.|.|.)*(.)(?!.)\\\\2\nenable_model_api=true")
@example(data=b"allowed_urls=" + b"(" * 5000 + b")" * 5000)
@example(data=b"allowed_urls=a{99999999999}")
@example(data=b"caf\xe9=\xff")
@example(data=b"allowed_urls=[\\ud800\n")  # found: the problem quoted a lone surrogate
def test_properties_validator_keeps_its_promise(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, data)


@pytest.mark.parametrize("kept", corpus("validate_properties"), ids=lambda p: p.name)
def test_kept_inputs(fuzz_dir: Path, kept: Path) -> None:
    check(fuzz_dir, kept.read_bytes())


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-properties")

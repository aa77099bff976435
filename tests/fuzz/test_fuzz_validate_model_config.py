"""The model-config.yml validator, for any file: findings, never an exception, bounded.

YAML is where the hostile shapes live: aliases (bombs, recursion), tags, dates, huge
integers, deep nesting, keys that are not strings.
"""

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
def yaml_documents(draw: st.DrawFn) -> bytes:
    lines = []
    for key, value in draw(st.lists(st.tuples(keys(), values()), max_size=10)):
        indent = draw(st.sampled_from(["", "", "  ", "handler:\n  ", "torchrun:\n  "]))
        anchor = draw(st.sampled_from(["", "&a ", "&b ", "*a", "*b"]))
        value = anchor if anchor.startswith("*") else anchor + value
        lines.append(f"{indent}{key!r}: {value}" if "\n" in key else f"{indent}{key}: {value}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def check(tmp: Path, data: bytes) -> None:
    path = tmp / "model-config.yml"
    path.write_bytes(data)
    keeps_the_promise(lambda: validate_paths([path], ROOT), path)


BOMB = b"a: &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n".encode()
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@given(data=yaml_documents() | mutated(seeds(".yml")) | st.binary(max_size=300))
@example(data=BOMB)
@example(data=b"handler: &h {warmup: *h}\n")
@example(data=b"? &k [*k]\n: 1\n")
@example(data=b"batchSize: 2024-02-30\nmaxBatchDelay: 0x_\n")
@example(data=b"batchSize: " + b"9" * 5000)
@example(data=b'"\\ud800": 1\nhandler:\n  "\\udc80": 2\n')
@example(data=b"handler: " + b"[" * 10_000)
@example(data=b"handler: {warmup_batch_size: " + b"9" * 4000 + b"}\n")
@example(data=b"? [1]\n: 2\n")
@example(data=b"<<: *x\n")
def test_model_config_validator_keeps_its_promise(fuzz_dir: Path, data: bytes) -> None:
    check(fuzz_dir, data)


@pytest.mark.parametrize("kept", corpus("validate_model_config"), ids=lambda p: p.name)
def test_kept_inputs(fuzz_dir: Path, kept: Path) -> None:
    check(fuzz_dir, kept.read_bytes())


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-model-config")

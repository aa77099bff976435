"""The model spec validator, for any spec and any handler source: findings, never an
exception, bounded, and the handler file is never run (it is read with ``ast``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from servekit.config.validate import validate_paths
from tests.fuzz.config_inputs import CORPUS, ROOT, keeps_the_promise, mutated, values
from tests.fuzz.kept import corpus

pytestmark = pytest.mark.timeout(300)
HANDLER_SEEDS = [
    *(ROOT / "handlers" / n for n in ("digits.py", "iris.py", "digits_options.py")),
    ROOT / "servekit" / "runtime" / "base.py",
    *sorted((CORPUS / "handlers").glob("*.py")),
]
SEEDS = [p.read_bytes() for p in HANDLER_SEEDS]
OPTION_SEEDS = [(CORPUS / "handlers" / "scaled_options.py").read_bytes()]


@st.composite
def specs(draw: st.DrawFn) -> bytes:
    options = draw(st.lists(st.tuples(
        st.sampled_from(["top_k", "scale", "labels", "mode", "warmup", "invert", "x"]),
        values() | st.sampled_from(["[a, b]", "[1, 2]", "null", "3.5"]),
    ), max_size=4))  # fmt: skip
    lines = ["name: fuzz_spec", 'version: "1.0"', "handler: HANDLER"]
    lines += draw(st.lists(st.sampled_from(
        ["serialized_file: models/digits.pt", "extra_files: [models/iris_labels.json]",
         "model_config: {batchSize: 4}", "model_config: 3", "extra_files: x", "name: other"]
    ), max_size=3))  # fmt: skip
    if options:
        lines.append("handler_options:")
        lines += [f"  {k}: {v}" for k, v in options]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def check(tmp: Path, spec: bytes, handler: bytes, options: bytes) -> None:
    (tmp / "fuzz_handler.py").write_bytes(handler)
    (tmp / "scaled_options.py").write_bytes(options)
    path = tmp / "fuzz_spec.yml"
    path.write_bytes(spec.replace(b"HANDLER", str(tmp / "fuzz_handler.py").encode()))
    keeps_the_promise(lambda: validate_paths([path], ROOT), path)
    assert "fuzz_handler" not in sys.modules, "the handler was imported"


@given(
    spec=specs() | mutated([b"name: fuzz_spec\nversion: '1'\nhandler: HANDLER\n"]),
    handler=st.sampled_from(SEEDS) | mutated(SEEDS) | st.binary(max_size=200),
    options=st.sampled_from(OPTION_SEEDS) | mutated(OPTION_SEEDS),
)
@example(
    spec=b"name: fuzz_spec\nversion: '1'\nhandler: HANDLER\nhandler_options: {top_k: 2}\n",
    handler=b"class A(A):\n    pass\n",
    options=OPTION_SEEDS[0],
)
@example(
    spec=b"name: fuzz_spec\nversion: '1'\nhandler: HANDLER\nhandler_options: {scale: 1}\n",
    handler=b"from .scaled_options import O as ScaledOptions\nclass H:\n"
    b"    options_class = ScaledOptions\n",
    options=b"from .scaled_options import ScaledOptions as O\n"
    b"class ScaledOptions(O):\n    scale: int = 1\n",
)
@example(
    spec=b"name: fuzz_spec\nversion: '1'\nhandler: HANDLER\nhandler_options: {check: 1}\n",
    handler=b"from .scaled_options import S\nclass H:\n    options_class = S\n",
    options=b"from servekit.runtime.options import HandlerOptions\n"
    b"class S(HandlerOptions):\n    check: int = 1\n    labels: list = []\n",
)
@example(
    spec=b"name: fuzz_spec\nversion: '1'\nhandler: HANDLER\n",
    handler=b"(" * 1000 + b"\x00",
    options=OPTION_SEEDS[0],
)
def test_spec_validator_keeps_its_promise(
    fuzz_dir: Path, spec: bytes, handler: bytes, options: bytes
) -> None:
    check(fuzz_dir, spec, handler, options)


@pytest.mark.parametrize("kept", corpus("validate_spec"), ids=lambda p: p.name)
def test_kept_inputs(fuzz_dir: Path, kept: Path) -> None:
    spec, handler, options = kept.read_bytes().split(b"\n#----\n")
    check(fuzz_dir, spec, handler, options)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-spec")

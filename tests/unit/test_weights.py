"""The weights people have (``servekit.runtime.weights``): formats told from the bytes of real
files, each loaded, and every way a file, class or option can be wrong named in the error."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from servekit.runtime import weights
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.weights import (
    EXPORT,
    HUGGINGFACE,
    SAFETENSORS,
    STATE_DICT,
    TORCHSCRIPT,
    WeightsOptions,
    arguments,
    build_module,
    check_format,
    load,
    resolve,
    sniff,
    split_target,
)

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent.parent
MINILM = ROOT / "build" / "models" / "minilm"
LINEAR = "torch.nn:Linear"
X = torch.tensor([[1.0, -2.0, 0.5, 3.0]])

NET = """
import torch

class Net(torch.nn.Module):
    def __init__(self, hidden=8, classes=3):
        super().__init__()
        self.body = torch.nn.Linear(4, hidden)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

def make(classes=3):
    return Net(classes=classes)

def not_a_module():
    return {"weights": 1}

def explodes(**kwargs):
    raise ValueError("no such size")

ANSWER = 42
"""


@dataclasses.dataclass(frozen=True)
class Files:
    """One file of each kind, all from the same model; ``expected`` is its answer on ``X``."""

    root: Path
    expected: torch.Tensor

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).eval()


def rezip(source: Path, dest: Path, replace: str, data: bytes) -> Path:
    """``source``'s zip with every entry ending in ``replace`` holding ``data``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            new.writestr(info, data if info.filename.endswith(replace) else old.read(info))
    return dest


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("weights")
    model = linear()
    torch.jit.save(torch.jit.script(model), root / "model.ts")
    torch.export.save(torch.export.export(model, (X,)), root / "model.pt2")
    torch.save(model.state_dict(), root / "model.pt")
    torch.save(model.state_dict(), root / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(model.state_dict(), str(root / "model.safetensors"))
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, root / "checkpoint.pt")
    torch.save(model, root / "whole.pt")
    torch.save([1, 2, 3], root / "list.pt")
    (root / "empty.bin").write_bytes(b"")
    (root / "notes.txt").write_text("weights: see the wiki\n")
    with zipfile.ZipFile(root / "photos.zip", "w") as archive:
        archive.writestr("photos/cat.txt", "meow")
    (root / "truncated.ts").write_bytes((root / "model.ts").read_bytes()[:300])
    (root / "truncated.safetensors").write_bytes((root / "model.safetensors").read_bytes()[:40])
    (root / "truncated.pt").write_bytes((root / "legacy.pt").read_bytes()[:40])
    rezip(root / "model.ts", root / "broken.ts", "constants.pkl", b"not a pickle")
    rezip(root / "model.pt", root / "broken.pt", "data.pkl", b"\x80\x02garbage")
    hf = root / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (root / "nodir").mkdir()
    with torch.no_grad():
        expected = model(X)
    return Files(root, expected)


# ----- sniff: the format from the bytes --------------------------------------------------------
SNIFFED = [
    ("model.ts", TORCHSCRIPT),
    ("model.pt2", EXPORT),
    ("model.pt", STATE_DICT),
    ("legacy.pt", STATE_DICT),
    ("model.safetensors", SAFETENSORS),
    ("checkpoint.pt", STATE_DICT),
    ("hf", HUGGINGFACE),
    ("empty.bin", None),
    ("notes.txt", None),
    ("photos.zip", None),
    ("truncated.ts", None),
    ("truncated.safetensors", None),
    ("nodir", None),
    ("no-such-file", None),
]


@pytest.mark.parametrize(("name", "fmt"), SNIFFED)
def test_sniff_tells_the_format_from_the_bytes(files: Files, name: str, fmt: str | None) -> None:
    assert sniff(files / name) == fmt


def test_sniff_ignores_the_file_name(files: Files, tmp_path: Path) -> None:
    for name, fmt in [("model.ts", TORCHSCRIPT), ("model.safetensors", SAFETENSORS)]:
        disguised = tmp_path / f"{name}.pt2"
        shutil.copy(files / name, disguised)
        assert sniff(disguised) == fmt


def test_sniff_on_the_packaged_minilm_directory() -> None:
    if not (MINILM / "config.json").is_file():
        pytest.skip("build/models/minilm is made by `make models-local`")
    assert sniff(MINILM) == HUGGINGFACE


@pytest.mark.parametrize(
    "head",
    [
        struct.pack("<Q", 2**63) + b"{}",  # a header longer than the file
        struct.pack("<Q", 0) + b"{",  # an empty header
        b"\x80\x09pickle protocol 9",
        b"PK\x03\x04 not really a zip",
    ],
)
def test_sniff_refuses_lookalike_headers(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "lookalike"
    path.write_bytes(head + b"\x00" * 32)
    assert sniff(path) is None


# ----- check_format: what it is said to be, or an error naming both ----------------------------
@pytest.mark.parametrize(
    ("name", "said", "found"),
    [
        ("model.ts", EXPORT, "a TorchScript file"),
        ("model.pt2", TORCHSCRIPT, "a torch.export program"),
        ("model.safetensors", TORCHSCRIPT, "a safetensors file"),
        ("model.pt", SAFETENSORS, "a state dict saved with torch.save"),
        ("notes.txt", STATE_DICT, "none of the formats servekit reads"),
        ("empty.bin", TORCHSCRIPT, "none of the formats servekit reads"),
        ("photos.zip", EXPORT, "none of the formats servekit reads"),
        ("truncated.ts", TORCHSCRIPT, "none of the formats servekit reads"),
    ],
)
def test_check_format_names_the_file_what_it_was_said_and_what_it_is(
    files: Files, name: str, said: str, found: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        check_format(files / name, said)
    message = str(caught.value)
    assert f"'{name}'" in message and found in message
    assert weights.DESCRIBED[said] in message


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("model.ts", TORCHSCRIPT),
        ("model.pt2", EXPORT),
        ("model.pt", STATE_DICT),
        ("legacy.pt", STATE_DICT),
        ("model.safetensors", SAFETENSORS),
        ("hf", HUGGINGFACE),
    ],
)
def test_check_format_accepts_what_the_bytes_are(files: Files, name: str, said: str) -> None:
    assert check_format(files / name, said) == said


def test_a_safetensors_file_is_a_state_dict(files: Files) -> None:
    assert check_format(files / "model.safetensors", STATE_DICT) == SAFETENSORS


# ----- load: every format, the same answers ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("model.ts", TORCHSCRIPT),
        ("model.pt2", EXPORT),
        ("model.pt", STATE_DICT),
        ("legacy.pt", STATE_DICT),
        ("model.safetensors", SAFETENSORS),
        ("model.safetensors", STATE_DICT),
        ("checkpoint.pt", STATE_DICT),
    ],
)
def test_load_gives_the_saved_model_in_eval_mode(files: Files, name: str, fmt: str) -> None:
    model = load(files / name, fmt, CPU, LINEAR, "[4, 3]")
    assert isinstance(model, torch.nn.Module)
    if fmt != EXPORT:  # an exported program runs in the mode it was traced in
        assert not model.training
    with torch.no_grad():
        assert torch.allclose(model(X), files.expected)


def test_a_user_class_built_with_other_sizes_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    built = build_module("user_nets:Net", '{"hidden": 5, "classes": 2}')
    save_file(built.state_dict(), str(tmp_path / "net.safetensors"))
    with pytest.raises(ModelLoadError, match=r"'net\.safetensors' does not fit .*size mismatch"):
        load(tmp_path / "net.safetensors", SAFETENSORS, CPU, "user_nets:make", "[2]")  # hidden 8


def test_load_fits_a_user_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    built = build_module("user_nets:Net", '{"classes": 2}')
    torch.save(built.state_dict(), tmp_path / "net.pt")
    loaded = load(tmp_path / "net.pt", STATE_DICT, CPU, "user_nets:make", "[2]")
    with torch.no_grad():
        assert torch.equal(loaded(X), built.eval()(X))


# ----- load: errors name the file and what went wrong ------------------------------------------
LOAD_ERRORS = [
    ("broken.ts", TORCHSCRIPT, LINEAR, "", r"'broken\.ts' cannot be loaded"),
    ("broken.pt", STATE_DICT, LINEAR, "[4, 3]", r"'broken\.pt' cannot be read as a state dict"),
    ("truncated.pt", STATE_DICT, LINEAR, "[4, 3]", r"'truncated\.pt' cannot be read"),
    ("truncated.ts", TORCHSCRIPT, "", "", r"'truncated\.ts' is said to be a TorchScript file"),
    ("model.pt", STATE_DICT, "torch.nn:Conv1d", "[4, 3, 1]", r"'model\.pt' does not fit torch"),
    ("model.pt", STATE_DICT, LINEAR, "[4, 2]", r"'model\.pt' does not fit .*size mismatch"),
    ("model.pt", STATE_DICT, LINEAR, '{"in_features": 4, "out_features": 3, "bias": false}',
     r"'model\.pt' does not fit torch\.nn:Linear: missing \[\], unexpected \['bias'\]"),
    ("model.safetensors", SAFETENSORS, "torch.nn:Sequential", "[]",
     r"missing \[\], unexpected \['bias', 'weight'\]"),
    ("whole.pt", STATE_DICT, LINEAR, "[4, 3]",
     r"'whole\.pt' cannot be read as a state dict: .*a whole pickled model is not read"),
    ("list.pt", STATE_DICT, LINEAR, "[4, 3]", r"'list\.pt' does not hold a state dict.*holds list"),
    ("hf", HUGGINGFACE, "", "", r"'hf' is a Hugging Face model directory.*text kinds"),
    ("model.pt", STATE_DICT, "torch.nn:NoSuchNet", "", r"torch\.nn has no NoSuchNet"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fmt", "module", "args", "match"), LOAD_ERRORS)
def test_load_errors_name_the_file_and_the_reason(
    files: Files, name: str, fmt: str, module: str, args: str, match: str
) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load(files / name, fmt, CPU, module, args)


def test_a_wrong_class_lists_missing_and_unexpected_keys(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError) as caught:
        load(files / "model.pt", STATE_DICT, CPU, "user_nets:Net")
    message = str(caught.value)
    assert "'model.pt' does not fit user_nets:Net" in message
    assert "missing ['body.bias', 'body.weight', 'head.bias', 'head.weight']" in message
    assert "unexpected ['bias', 'weight']" in message


def test_a_whole_pickled_module_error_is_one_readable_line(files: Files) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load(files / "whole.pt", STATE_DICT, CPU, LINEAR, "[4, 3]")
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message, repr(message)
    assert "save model.state_dict(), or TorchScript" in message


def test_a_pickled_wrapper_with_many_keys_is_not_guessed(files: Files, tmp_path: Path) -> None:
    state = linear().state_dict()
    torch.save({"model": state, "a": 1, "b": 2, "c": 3, "d": 4}, tmp_path / "run.pt")
    with pytest.raises(ModelLoadError, match=r"'run\.pt' does not hold a state dict"):
        load(tmp_path / "run.pt", STATE_DICT, CPU, LINEAR, "[4, 3]")


def test_a_plain_pickle_is_never_executed(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickle code ran",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Boom(), protocol=2))
    assert sniff(path) == STATE_DICT
    with pytest.raises(ModelLoadError, match=r"'evil\.pt' cannot be read as a state dict"):
        load(path, STATE_DICT, CPU, LINEAR, "[4, 3]")


# ----- targets and their arguments -------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "parts"),
    [
        ("torch.nn:Linear", ("torch.nn", ("Linear",))),
        ("pkg.mod:Outer.Inner", ("pkg.mod", ("Outer", "Inner"))),
        ("m:f", ("m", ("f",))),
    ],
)
def test_split_target(target: str, parts: tuple[str, tuple[str, ...]]) -> None:
    assert split_target(target) == parts


@pytest.mark.parametrize(
    "target",
    ["", "torch.nn", "torch.nn:", ":Linear", "torch.nn:Linear.", "torch..nn:Linear",
     "torch.nn::Linear", "my-pkg:Net", "nets/net.py:Net", "pkg:Net(3)", "pkg :Net", "pkg:1Net"],
)  # fmt: skip
def test_split_target_refuses_what_is_not_module_colon_class(target: str) -> None:
    with pytest.raises(ModelLoadError, match=r"is not 'package\.module:Class'"):
        split_target(target)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", ([], {})),
        ("[]", ([], {})),
        ("[4, 3]", ([4, 3], {})),
        ('{"classes": 2}', ([], {"classes": 2})),
        ('{"sizes": [1, 2], "name": "x"}', ([], {"sizes": [1, 2], "name": "x"})),
    ],
)
def test_arguments(text: str, parsed: tuple[list[object], dict[str, object]]) -> None:
    assert arguments(text) == parsed


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{classes: 2}", "is not JSON"),
        ("[4, 3", "is not JSON"),
        ("[" * 100_000, "is not JSON"),
        ('"4, 3"', "got str"),
        ("4", "got int"),
        ("null", "got NoneType"),
    ],
)
def test_arguments_refuse_what_is_not_a_json_list_or_object(text: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match) as caught:
        arguments(text)
    assert len(str(caught.value)) < 400


def test_resolve_finds_nested_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("torch.nn:Linear") is torch.nn.Linear
    assert resolve("torch:nn.Linear") is torch.nn.Linear
    assert resolve("user_nets:Net").__name__ == "Net"


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("no_such_package_here:Net", "cannot import no_such_package_here: ModuleNotFoundError"),
        ("user_raising:Net", "cannot import user_raising: ZeroDivisionError"),
        ("user_nets:Missing", "user_nets has no Missing"),
        ("user_nets:Net.nothing", "user_nets has no Net.nothing"),
        ("user_nets:ANSWER", "is not a class or function"),
    ],
)
def test_resolve_errors_name_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, match: str
) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    (tmp_path / "user_raising.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=match) as caught:
        resolve(target)
    assert repr(target) in str(caught.value)


@pytest.mark.parametrize(
    ("target", "args", "match"),
    [
        ("user_nets:not_a_module", "", "gave a dict, not a torch.nn.Module"),
        ("user_nets:explodes", '{"size": 3}', r'module_args \{"size": 3\}: ValueError: no such'),
        ("user_nets:Net", '{"layers": 3}', "TypeError: .*unexpected keyword argument 'layers'"),
        ("user_nets:Net", "[1, 2, 3, 4]", "TypeError"),
        ("user_nets:Net", "[-1]", r"module_args \[-1\]: RuntimeError"),
        ("user_nets:Net", "3", "must be a JSON list"),
    ],
)
def test_build_module_errors_name_the_target_and_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, args: str, match: str
) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=match):
        build_module(target, args)


def test_build_module_with_no_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    built = build_module("user_nets:make", "")
    assert built.head.out_features == 3


# ----- the options the kinds read --------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"weights_format": "onnx"}, "'weights_format' is 'onnx'; allowed: torchscript, export"),
        ({"weights_format": "state-dict"}, "'module' is empty; a state-dict file"),
        ({"weights_format": "safetensors"}, "'module' is empty; a safetensors file"),
        ({"weights_format": "state-dict", "module": "nets.Net"}, "not 'package.module:Class'"),
        ({"weights_format": "torchscript", "module_args": "[1"}, "module_args '\\[1' is not JSON"),
    ],
)
def test_weights_options_are_checked_when_read(section: dict[str, str], match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        WeightsOptions.from_section(section)


def test_weights_options_defaults_and_a_state_dict_with_its_class() -> None:
    assert WeightsOptions.from_section(None).weights_format == ""
    options = WeightsOptions.from_section(
        {"weights": "net.pt", "weights_format": "state-dict", "module": "nets:Net",
         "module_args": '{"classes": 2}'}
    )  # fmt: skip
    assert (options.module, options.module_args) == ("nets:Net", '{"classes": 2}')

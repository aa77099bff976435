"""The kept inputs of a fuzz target: ``tests/corpus/fuzz/<target>/``, seeds and crashes found."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "fuzz"


def corpus(target: str) -> list[Path]:
    """Every file kept for ``target``, sorted (an empty list when there is none yet)."""
    directory = CORPUS / target
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []

"""The corpus of bad configs: each file states, in ``# expect:`` lines, exactly what it must yield.

``# expect: <severity> <code> <key> <line or ->`` - one line per finding; the
validator must report exactly those findings for the file, no more, no fewer. A key with
control characters or lone surrogates is written as the text output shows it (``\\ud800``).
Properties files may be Latin-1 (as Java reads them); their ``# expect:`` lines are ASCII.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit.config.findings import printable
from servekit.config.validate import validate_paths

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "corpus"
CASES = sorted(
    p
    for p in CORPUS.rglob("*")
    if p.suffix in (".properties", ".yml") and "fuzz" not in p.relative_to(CORPUS).parts
)

Expected = tuple[str, str, str, int | None]


def expected(path: Path) -> set[Expected]:
    found = set()
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("# expect: "):
            severity, code, key, where = line.removeprefix("# expect: ").split(" ")
            found.add((severity, code, key, None if where == "-" else int(where)))
    return found


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert all(expected(case) for case in CASES), "every case states what it expects"


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_case_yields_exactly_its_findings(case: Path) -> None:
    findings = validate_paths([case], ROOT)
    got = {(f.severity, f.code, printable(f.key), f.line) for f in findings}
    assert got == expected(case), "\n".join(f.text() for f in findings)
    for finding in findings:
        assert finding.file == str(case)
        assert finding.expected and finding.fix and finding.problem

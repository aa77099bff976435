"""The project as a whole: its config validates, as ``make validate`` checks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit.config import validate


def test_config_validates(project_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = validate.main(["--project", str(project_root)])
    assert code == 0, capsys.readouterr().out

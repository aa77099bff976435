"""How servekit.serve.server writes each private TorchServe's config (e2e tests run them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servekit.serve.server import TorchServe, absolute_log_config, read_properties

ROOT = Path(__file__).resolve().parent.parent.parent


OPTION = "-Dlog4j.configurationFile="


@pytest.mark.parametrize(
    "vmargs, expected",
    [
        (f"{OPTION}config/log4j2.xml", f"{OPTION}/p/config/log4j2.xml"),
        (f"-Xmx2g {OPTION}a.xml -Dx=1", f"-Xmx2g {OPTION}/p/a.xml -Dx=1"),
        (f"{OPTION}/etc/log4j2.xml", f"{OPTION}/etc/log4j2.xml"),
        (f"{OPTION}file:///x.xml", f"{OPTION}file:///x.xml"),
        ("-Xmx2g", "-Xmx2g"),
    ],
)
def test_a_relative_log_config_is_resolved_from_the_configs_directory(
    vmargs: str, expected: str
) -> None:
    assert absolute_log_config(vmargs, Path("/p")) == expected


def test_a_private_server_gets_the_projects_log_config_by_absolute_path(tmp_path: Path) -> None:
    ts = TorchServe(ROOT / "config.properties", tmp_path / "ts")
    ts.workdir.mkdir()
    written = read_properties(ts.write_config().read_text())
    path = written["vmargs"].removeprefix(OPTION)
    assert path == str(ROOT / "config" / "log4j2.xml") and Path(path).is_file()

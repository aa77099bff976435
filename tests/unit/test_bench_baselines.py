"""servekit.bench.baselines.runner: a baseline server that never gets healthy is reported with
its log's last lines (its log directory is usually a temp dir, removed by then)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servekit.bench.baselines.runner import Baseline, BaselineError
from servekit.serve.server import free_ports


@pytest.mark.parametrize(
    ("script", "timeout", "said"),
    [("import time; time.sleep(60)", 0.5, "not 200 within 0.5 s"), ("", 60, "exited with 0")],
)
def test_a_server_that_never_gets_healthy_is_reported_with_its_log(
    tmp_path: Path, script: str, timeout: float, said: str
) -> None:
    log = tmp_path / "server.log"
    log.write_text("starting\nImportError: no module named 'litserve'\n")
    (port,) = free_ports(1)  # nothing listens there
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    server = Baseline("litserve", port, "tiny", log, process)
    try:
        with pytest.raises(BaselineError) as raised:
            server.wait_healthy(timeout)
    finally:
        server.stop()
    message = str(raised.value)
    assert said in message
    assert message.endswith(f"{log}:\nstarting\nImportError: no module named 'litserve'")

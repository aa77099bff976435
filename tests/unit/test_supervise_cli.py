"""``servekit run`` (servekit/ops/supervise.py) without a TorchServe: its usage errors, and that
it hands back the exit code of a command that ends by itself (the drain itself is tested end
to end in tests/e2e/test_drain_stop.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from servekit.ops.supervise import main

RUN = [sys.executable, "-m", "servekit.cli", "run"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the TorchServe command after --"),
        (["--"], "give the TorchServe command after --"),
        (["--", "torchserve", "--start", "--ncs"], "--start --foreground"),
        (["--announce", "5", "--timeout", "5", "--", "true"], "must be shorter than --timeout"),
        (["--retry-after", "x", "--", "true"], "whole number"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_that_cannot_start_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--", "/nonexistent/torchserve", "--start", "--foreground"]) == 2
    assert "cannot start /nonexistent/torchserve" in capsys.readouterr().err


@pytest.mark.parametrize("code", [0, 3])
def test_the_commands_own_exit_code_comes_back(code: int) -> None:
    assert main(["--", sys.executable, "-c", f"raise SystemExit({code})"]) == code


def test_a_signal_with_no_torchserve_underneath_stops_the_command_and_says_so() -> None:
    run = subprocess.Popen(
        [*RUN, "--", sys.executable, "-c", "import time; time.sleep(60)"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # the interpreter is up and the command started
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    assert "no TorchServe frontend is running under this command" in err
    assert "Traceback" not in err

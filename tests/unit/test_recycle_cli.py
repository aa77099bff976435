"""``servekit recycle`` checks its options at the edge, as ``servekit health`` does: a value that
could never work is a usage error (exit 2) naming the option, before any request is sent."""

from __future__ import annotations

import pytest

from servekit import cli

MODEL = ["--model", "tiny", "--max-memory-mb", "800"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "tiny", "--max-memory-mb", "nan"], "--max-memory-mb: 'nan' must be a finite"),
        (["--model", "tiny", "--max-memory-mb", "1e400"], "'1e400' must be a finite number > 0"),
        (["--model", "tiny", "--max-memory-mb", "inf"], "'inf' must be a finite number > 0"),
        (["--model", "tiny", "--max-memory-mb", "0"], "'0' must be a finite number > 0"),
        (["--model", "tiny", "--max-requests", "-3"], "'-3' must be a finite number > 0"),
        (["--model", "", "--max-requests", "5"], "model name must not be empty"),
        (["--model", "  ", "--max-requests", "5"], "model name must not be empty"),
        (["--model", "bad name", "--max-requests", "5"], "not a model name TorchServe accepts"),
        (["--model", "../x", "--max-requests", "5"], "not a model name TorchServe accepts"),
        ([*MODEL, "--management-url", "localhost:18081"], "did you mean 'http://localhost:18081'"),
        ([*MODEL, "--management-url", "ftp://127.0.0.1:1"], "scheme 'ftp'"),
        ([*MODEL, "--management-url", "http://"], "no host"),
        ([*MODEL, "--every", "nan"], "--every"),
        ([*MODEL, "--timeout", "inf"], "--timeout"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["recycle", *argv]) == cli.USAGE
    captured = capsys.readouterr()
    assert needle in captured.err
    assert captured.out == ""

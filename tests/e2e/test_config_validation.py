"""What the validator is for, on a real TorchServe: the server ignores mistakes silently.

A misspelt key (``maxBatchdelay``) and a quoted number (``batchSize: "4"``) go into an
archive; TorchServe loads it without complaint and describe shows its defaults. The
validator names both before the server starts. A bad handler option fails ``initialize``;
``servekit.health.initlog`` finds the reason in the server's real ``model_log.log``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servekit.config.specs import load_spec, read_yaml
from servekit.config.validate import validate_paths
from servekit.health.initlog import last_init_error
from servekit.serve.archive import build
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT, describe, wait_ready

pytestmark = pytest.mark.e2e

MISTAKES = 'minWorkers: 1\nmaxWorkers: 1\nmaxBatchdelay: 7\nbatchSize: "4"\n'
TYPO_SPEC = 'name: typo_model\nversion: "1.0"\nhandler: handlers/empty.py\n'
BAD_OPTION_SPEC = (
    'name: bad_option\nversion: "1.0"\nhandler: handlers/digits.py\n'
    "serialized_file: models/digits.pt\nhandler_options:\n  top_k: 42\n"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("configs")
    (where / "model-config.yml").write_text(MISTAKES)
    (where / "typo_model.yml").write_text(TYPO_SPEC)
    (where / "bad_option.yml").write_text(BAD_OPTION_SPEC)
    store = where / "store"
    build(
        load_spec(where / "typo_model.yml", ROOT),
        read_yaml(where / "model-config.yml"),
        ROOT,
        store,
    )
    build(
        load_spec(where / "bad_option.yml", ROOT), read_yaml(ROOT / "model-config.yml"), ROOT, store
    )
    build(
        load_spec(ROOT / "config" / "failing_model.yml", ROOT),
        read_yaml(ROOT / "model-config.yml"),
        ROOT,
        store,
    )
    return where


@pytest.fixture(scope="module")
def server(files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    workdir = tmp_path_factory.mktemp("torchserve-config")
    with running(
        ROOT / "config.properties",
        workdir,
        model_store=files / "store",
        models=["typo_model", "bad_option", "failing_model"],
    ) as ts:
        wait_ready(ts, ["typo_model"])
        yield ts


def test_torchserve_ignores_the_mistakes_silently(server: TorchServe) -> None:
    entry = describe(server, "typo_model")
    # TorchServe's own defaults, not the 7 ms and 4 the file meant:
    assert entry["maxBatchDelay"] == 100
    assert entry["batchSize"] == 1
    assert [w["status"] for w in entry["workers"]] == ["READY"]
    assert "maxBatchdelay" not in (server.log_dir / "ts_log.log").read_text()


def test_the_validator_catches_what_torchserve_ignored(files: Path) -> None:
    findings = validate_paths([files / "model-config.yml", files / "typo_model.yml"], ROOT)
    got = {(f.code, f.key, f.line) for f in findings}
    assert got == {("unknown-key", "maxBatchdelay", 3), ("wrong-type", "batchSize", 4)}
    typo = next(f for f in findings if f.code == "unknown-key")
    assert typo.fix == "did you mean 'maxBatchDelay'?"


def test_bad_option_is_caught_before_and_reported_after(files: Path, server: TorchServe) -> None:
    # A project's own range checks (DigitsOptions.check) run only when the handler is imported.
    assert validate_paths([files / "bad_option.yml"], ROOT) == []
    (finding,) = validate_paths([files / "bad_option.yml"], ROOT, import_handlers=True)
    assert (finding.code, finding.key, finding.line) == ("bad-option", "handler.top_k", 6)
    reason = wait_for_init_error(server, "bad_option")
    assert reason == "handler option 'top_k' is 42; it must be 1..10"
    assert last_init_error(server.log_dir, "typo_model") is None


def test_failing_model_reason_is_found(server: TorchServe) -> None:
    reason = wait_for_init_error(server, "failing_model")
    assert reason == "model 'failing_model' fails to initialize on purpose (demo of init failure)"


def wait_for_init_error(server: TorchServe, model: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = last_init_error(server.log_dir, model)
        if reason is not None:
            return reason
        time.sleep(0.2)
    raise AssertionError(f"no init failure of {model} logged\n{server.log_tail()}")

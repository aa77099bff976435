"""servekit.health.initlog on log lines in TorchServe 0.12's format (e2e reads a real log)."""

from __future__ import annotations

from pathlib import Path

from servekit.health.initlog import last_init_error

FAIL = (
    "{t} [INFO ] W-{port}-{model}_1.0-stdout MODEL_LOG - "
    "Failed to load model {model}, exception {reason}"
)
LOADED = (
    "{t} [DEBUG] W-{port}-{model}_1.0 org.pytorch.serve.wlm.WorkerThread - "
    "W-{port}-{model}_1.0 State change WORKER_STARTED -> WORKER_MODEL_LOADED"
)


def logs(tmp_path: Path, model_log: list[str], ts_log: tuple[str, ...] = ()) -> Path:
    (tmp_path / "model_log.log").write_text("\n".join(model_log) + "\n")
    (tmp_path / "ts_log.log").write_text("\n".join(ts_log) + "\n")
    return tmp_path


def test_latest_failure_of_that_model_only(tmp_path: Path) -> None:
    log_dir = logs(
        tmp_path,
        [
            FAIL.format(t="2026-11-22T04:00:00,000", port=9000, model="digits", reason="old"),
            FAIL.format(t="2026-11-22T04:00:01,000", port=9000, model="digits", reason="new"),
            FAIL.format(t="2026-11-22T04:00:02,000", port=9001, model="bad_digits", reason="x"),
            FAIL.format(t="2026-11-22T04:00:02,000", port=9002, model="digits_v2", reason="y"),
        ],
    )
    assert last_init_error(log_dir, "digits") == "new"
    assert last_init_error(log_dir, "bad_digits") == "x"
    assert last_init_error(log_dir, "iris") is None


def test_a_later_load_clears_the_failure(tmp_path: Path) -> None:
    fail = FAIL.format(t="2026-11-22T04:00:01,000", port=9000, model="iris", reason="broken")
    later = LOADED.format(t="2026-11-22T04:00:05,000", port=9003, model="iris")
    earlier = LOADED.format(t="2026-11-22T03:59:00,000", port=9000, model="iris")
    other = LOADED.format(t="2026-11-22T04:00:05,000", port=9004, model="iris_v2")
    assert last_init_error(logs(tmp_path, [fail], (earlier, other)), "iris") == "broken"
    assert last_init_error(logs(tmp_path, [fail], (later,)), "iris") is None


def test_no_logs_no_error(tmp_path: Path) -> None:
    assert last_init_error(tmp_path / "missing", "iris") is None

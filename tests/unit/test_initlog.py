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


def died(t: str, model: str, *traceback: str, port: int = 9000) -> list[str]:
    """A worker's death as TorchServe 0.12 logs it: the line, then the traceback, line by line."""
    prefix = f"{t} [INFO ] W-{port}-{model}_1.0-stdout MODEL_LOG - "
    return [prefix + text for text in ("Backend worker process died.", *traceback)]


# what a handler importing a module missing from its archive gives (from a real model_log.log)
IMPORT_FAILED = (
    "Traceback (most recent call last):",
    '  File "/venv/site-packages/ts/model_loader.py", line 108, in load',
    "    module, function_name = self._load_handler_file(handler)",
    "                            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    '  File "/tmp/ts/models/5ddd/tiny.py", line 10, in <module>',
    "    from handlers.common.util import double",
    "ModuleNotFoundError: No module named 'handlers.common'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/venv/site-packages/ts/model_loader.py", line 159, in _load_default_handler',
    '    module = importlib.import_module(module_name, "ts.torch_handler")',
    '  File "<frozen importlib._bootstrap>", line 1140, in _find_and_load_unlocked',
    "ModuleNotFoundError: No module named 'ts.torch_handler.tiny'",
)
RESTART = "Listening on port: /tmp/ts/tmp/.ts.sock.9000"


def test_a_handler_that_cannot_be_imported_names_the_missing_module(tmp_path: Path) -> None:
    log = died("2026-11-22T04:00:01,000", "tiny", *IMPORT_FAILED)
    log.append(f"2026-11-22T04:00:03,000 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - {RESTART}")
    assert last_init_error(logs(tmp_path, log), "tiny") == (
        "the worker died: ModuleNotFoundError: No module named 'handlers.common'"
    )


def test_a_relative_import_and_an_initialize_error_are_their_last_exception(
    tmp_path: Path,
) -> None:
    relative = (
        "Traceback (most recent call last):",
        '  File "/tmp/ts/models/1/rel.py", line 3, in <module>',
        "ImportError: attempted relative import with no known parent package",
        "",
        "During handling of the above exception, another exception occurred:",
        "ModuleNotFoundError: No module named 'ts.torch_handler.rel'",
    )
    wrapped = (
        "Traceback (most recent call last):",
        "KeyError: 'weights'",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        "servekit.errors.ConfigError: models/x.pt has no 'weights'",
    )
    log = died("2026-11-22T04:00:01,000", "rel", *relative, port=9001)
    log += died("2026-11-22T04:00:01,000", "x", *wrapped, port=9002)
    assert last_init_error(logs(tmp_path, log), "rel") == (
        "the worker died: ImportError: attempted relative import with no known parent package"
    )
    assert last_init_error(logs(tmp_path, log), "x") == (
        "the worker died: ConfigError: models/x.pt has no 'weights'"
    )


def test_the_latest_of_a_death_and_a_failed_load_wins_and_a_load_clears_both(
    tmp_path: Path,
) -> None:
    fail = FAIL.format(t="2026-11-22T04:00:05,000", port=9000, model="tiny", reason="later")
    death = died("2026-11-22T04:00:01,000", "tiny", *IMPORT_FAILED)
    assert last_init_error(logs(tmp_path, [*death, fail]), "tiny") == "later"
    restart = f"2026-11-22T04:00:08,000 [INFO ] W-9000-tiny_1.0-stdout MODEL_LOG - {RESTART}"
    newer = [restart, *died("2026-11-22T04:00:09,000", "tiny", *IMPORT_FAILED)]
    assert last_init_error(logs(tmp_path, [fail, *newer]), "tiny") == (
        "the worker died: ModuleNotFoundError: No module named 'handlers.common'"
    )
    loaded = LOADED.format(t="2026-11-22T04:00:10,000", port=9000, model="tiny")
    assert last_init_error(logs(tmp_path, [fail, *newer], (loaded,)), "tiny") is None


def test_a_death_without_a_traceback_or_of_another_model_is_no_reason(tmp_path: Path) -> None:
    log = died("2026-11-22T04:00:01,000", "tiny")
    log += died("2026-11-22T04:00:01,000", "tiny_v2", *IMPORT_FAILED, port=9001)
    assert last_init_error(logs(tmp_path, log), "tiny") is None


def test_the_death_that_follows_a_logged_load_failure_does_not_hide_it(tmp_path: Path) -> None:
    """TorchServe 0.12: 'Failed to load model' with the reason, then the worker dies of a
    generic RuntimeError; a later process of the same worker is read again."""
    fail = FAIL.format(t="2026-11-22T04:00:01,000", port=9001, model="bad", reason="on purpose")
    generic = ("Traceback (most recent call last):", "RuntimeError: 500 - Unknown exception")
    log = [fail, *died("2026-11-22T04:00:01,001", "bad", *generic, port=9001)]
    assert last_init_error(logs(tmp_path, log), "bad") == "on purpose"
    restart = f"2026-11-22T04:00:02,000 [INFO ] W-9001-bad_1.0-stdout MODEL_LOG - {RESTART}"
    log += [restart, *died("2026-11-22T04:00:03,000", "bad", *IMPORT_FAILED, port=9001)]
    assert last_init_error(logs(tmp_path, log), "bad") == (
        "the worker died: ModuleNotFoundError: No module named 'handlers.common'"
    )

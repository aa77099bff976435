"""servekit rollout on a real TorchServe (model API on, loopback): a new version under
closed-loop load loses no request and answers everything sent after the switch; a version
that fails to load, or fails its smoke request, is removed and the old one keeps serving.

The server's model store is a temporary copy holding slow_model (about 200 ms a request) with
two workers and a queue of 20, so six clients are never refused; the new versions are the same
archive with another version in its manifest (and, for the failing one, a handler option its
initialize refuses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import Any

import psutil
import pytest
import requests
import yaml

from servekit.bench.closed_loop import ANSWERED, ClosedLoop
from servekit.ops.frontend import find_frontend
from servekit.runtime.recycle import PARK_SECONDS
from servekit.serve.server import TorchServe, running
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

MODEL = "slow_model"
OLD = "1.0"
BODY = b'{"value": 1}'
CLIENTS = 6


def rebuilt(source: Path, target: Path, version: str, name: str = MODEL, **handler: object) -> Path:
    """``source`` with ``version`` (and model ``name``) in its manifest, two workers, a queue
    of 20, and the given handler options changed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        manifest = json.loads(old.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"]["configFile"]
        for info in old.infolist():
            data = old.read(info.filename)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest["model"] |= {"modelVersion": version, "modelName": name}
                data = json.dumps(manifest, indent=2).encode()
            elif info.filename == config_name:
                config = yaml.safe_load(data)
                config |= {"minWorkers": 2, "maxWorkers": 2, "jobQueueSize": 20}
                config["handler"] |= handler
                data = yaml.safe_dump(config).encode()
            new.writestr(info, data)
    return target


@pytest.fixture(scope="module")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    store = tmp_path_factory.mktemp("rollout-store")
    rebuilt(model_store / f"{MODEL}.mar", store / f"{MODEL}.mar", OLD)
    workdir = tmp_path_factory.mktemp("torchserve-rollout")
    extra = {"enable_model_api": "true"}
    with running(
        ROOT / "config.properties", workdir, model_store=store, models=[MODEL], extra=extra
    ) as ts:
        ts.management().wait_ready(MODEL, 2, timeout=120)
        yield ts


@pytest.fixture(scope="module")
def archives(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test's new archives are built: outside the server's model store."""
    return tmp_path_factory.mktemp("rollout-archives")


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    lines_at: dict[str, float] = field(default_factory=dict)  # line -> monotonic arrival

    def arrived(self, text: str) -> float:
        return next(at for line, at in self.lines_at.items() if text in line)


def rollout(
    server: TorchServe,
    archive: Path,
    *extra: str,
    timeout: float = 150,
    signal_after: tuple[str, int] | None = None,
) -> Run:
    """``servekit rollout`` in its own process, with the server's TMPDIR; each stdout line
    timed as it arrives (a request sent after a line arrived was sent after it was printed).
    ``signal_after=(text, signum)``: send it that signal when a line with ``text`` arrives."""
    command = [sys.executable, "-m", "servekit.cli", "rollout", MODEL, str(archive)]
    command += ["--management-url", server.management_url]
    command += ["--inference-url", server.inference_url, "--timeout", "60", *extra]
    env = {**os.environ, "TMPDIR": str(server.tmpdir)}
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    lines: dict[str, float] = {}
    errors: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    reader = threading.Thread(target=lambda: errors.extend(process.stderr or []), daemon=True)
    reader.start()
    for line in process.stdout:
        lines[line.rstrip("\n")] = time.monotonic()
        if signal_after is not None and signal_after[0] in line:
            process.send_signal(signal_after[1])
    code = process.wait(timeout)
    reader.join(10)
    return Run(code, "\n".join(lines), "".join(errors), time.monotonic() - started, lines)


def versions(server: TorchServe) -> dict[str, bool]:
    """Each registered version of the model: whether it is the default."""
    entries = server.management().describe(MODEL, "all")
    default = server.management().entry(MODEL)["modelVersion"]
    return {e["modelVersion"]: e["modelVersion"] == default for e in entries}


def default_version(server: TorchServe) -> str:
    return str(server.management().entry(MODEL)["modelVersion"])


def answered_by(server: TorchServe) -> tuple[int, str | None]:
    reply = requests.post(f"{server.inference_url}/predictions/{MODEL}", data=BODY, timeout=30)
    return reply.status_code, reply.headers.get("X-Model-Version")


def original(server: TorchServe) -> Path:
    """The archive of version 1.0 in the server's model store."""
    assert server.model_store is not None
    return server.model_store / f"{MODEL}.mar"


def store_files(server: TorchServe) -> list[str]:
    assert server.model_store is not None
    return sorted(p.name for p in server.model_store.iterdir())


def unchanged_after(server: TorchServe, action: Callable[[], Run]) -> Run:
    """Run ``action`` (a failed rollout): the default version, what is registered and the
    model store are as they were, and the default still answers 200."""
    before = (versions(server), store_files(server))
    run = action()
    assert (versions(server), store_files(server)) == before, run.err
    assert answered_by(server) == (200, default_version(server))
    leftover_workers(server)  # and no process of the removed version stays behind
    return run


def worker_processes(server: TorchServe) -> set[int]:
    frontend = find_frontend(server.management_url)
    assert frontend is not None, "the frontend of the test server is not found"
    children = psutil.Process(frontend.pid).children(recursive=True)
    return {p.pid for p in children if "model_service_worker" in " ".join(p.cmdline())}


def leftover_workers(server: TorchServe) -> float:
    """Seconds until the server's worker processes are exactly the default version's."""
    started = time.monotonic()
    serving = {int(w["pid"]) for w in server.management().entry(MODEL)["workers"]}
    while (running := worker_processes(server)) != serving:
        assert time.monotonic() - started < PARK_SECONDS + 15, (running, serving)
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


# --- failures first: each leaves the server as it was -------------------------------------------


def test_a_version_that_fails_to_load_is_removed(server: TorchServe, archives: Path) -> None:
    bad = rebuilt(original(server), archives / "bad.mar", "9.0", delay_ms=-1)
    run = unchanged_after(server, lambda: rollout(server, bad, "--smoke-json", BODY.decode()))
    assert run.code == 1, run.err
    assert f"{MODEL} 9.0 failed to load: handler option 'delay_ms' is -1" in run.err, run.err
    assert f"rolled back: 9.0 unregistered; {MODEL}-9_0-rollout-" in run.err
    assert "Traceback" not in run.err
    assert run.seconds < 60, run  # the log's reason ends the wait: not the 60 s timeout


def test_a_failing_smoke_request_rolls_back(server: TorchServe, archives: Path) -> None:
    new = rebuilt(original(server), archives / "smoke.mar", "8.0")
    smoke = ("--smoke-json", '{"nope": 1}', "--workers", "1")  # fewer than the archive says
    run = unchanged_after(server, lambda: rollout(server, new, *smoke))
    assert run.code == 1, run.err
    assert f"{MODEL}: registered 8.0 (" in run.out and ") with 1 worker" in run.out, run.out
    assert f"{MODEL} 8.0: the smoke request answered 400: " in run.err, run.err
    assert "send {" in run.err  # the handler's message
    assert f"rolled back: 8.0 unregistered; {MODEL}-8_0-rollout-" in run.err


def test_an_archive_in_the_model_store_is_registered_by_name_and_kept(
    server: TorchServe,
) -> None:
    """Not copied, and not removed by the roll-back: it is the operator's file."""
    inside = rebuilt(original(server), original(server).with_name("slow_v5.mar"), "5.0")
    try:
        run = unchanged_after(server, lambda: rollout(server, inside, "--smoke-json", "[]"))
        assert run.code == 1, run.err
        assert f"{MODEL}: registered 5.0 (slow_v5.mar) with 2 workers" in run.out, run.out
        assert "rolled back: 5.0 unregistered\n" in run.err, run.err
    finally:
        inside.unlink()


def test_sigterm_before_the_switch_rolls_back(server: TorchServe, archives: Path) -> None:
    new = rebuilt(original(server), archives / "stopped.mar", "6.0")
    run = unchanged_after(
        server,
        lambda: rollout(
            server, new, "--smoke-json", BODY.decode(), signal_after=("registered", SIGTERM)
        ),
    )
    assert run.code == 128 + SIGTERM, run.err
    assert (
        "stopped by SIGTERM" in run.err
        and f"rolled back: 6.0 unregistered; {MODEL}-6_0-rollout-" in run.err
    )


def test_the_registered_version_again_is_a_usage_error(server: TorchServe, archives: Path) -> None:
    same = rebuilt(
        original(server),
        archives / "same.mar",
        default_version(server),
    )
    run = unchanged_after(server, lambda: rollout(server, same, "--smoke-json", "{}"))
    assert run.code == 2, run.err
    assert f"version {default_version(server)} is already registered" in run.err


def test_a_model_not_served(server: TorchServe, archives: Path) -> None:
    command = [sys.executable, "-m", "servekit.cli", "rollout", "iris", str(archives / "x.mar")]
    new = rebuilt(original(server), archives / "x.mar", "7.0", name="iris")
    assert new.is_file()
    command += ["--management-url", server.management_url, "--smoke-json", "{}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert f"iris is not served (served: {MODEL})" in done.stderr


# --- the rollout under load ------------------------------------------------------------------


def test_rollout_under_load_loses_nothing(
    server: TorchServe, archives: Path, record_property: Callable[[str, Any], None]
) -> None:
    old = default_version(server)
    new = rebuilt(original(server), archives / "v2.mar", "2.0")
    url = f"{server.inference_url}/predictions/{MODEL}"
    with ClosedLoop(url, BODY, clients=CLIENTS, timeout=60) as load:
        load.wait_for(20, timeout=60)
        run = rollout(server, new, "--smoke-json", BODY.decode())
        answered = load.outcomes()[ANSWERED]
        load.wait_for(answered + 20, timeout=60)  # more load on the new version
    assert run.code == 0, run.err
    switched = run.arrived(f"default version {old} -> 2.0")
    outcomes = load.snapshot()
    kinds = Counter(o.kind for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    assert kinds == Counter({ANSWERED: len(outcomes)}), (kinds, [o.error for o in outcomes][:5])
    assert statuses == Counter({200: len(outcomes)}), statuses
    after = [o for o in outcomes if o.sent > switched]
    by = Counter(o.headers.get("x-model-version") for o in after)
    assert after and by == Counter({"2.0": len(after)}), by
    before = Counter(o.headers.get("x-model-version") for o in outcomes if o.sent <= switched)
    assert before[old] > 0, before
    across = sum(o.sent <= switched < o.ended for o in outcomes)  # in flight at the switch
    metadata = server.management().entry(MODEL, customized=True)["customizedMetadata"]
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert metadata["model"]["version"] == "2.0"
    assert versions(server) == {"2.0": True}
    assert answered_by(server) == (200, "2.0")
    copies = [name for name in store_files(server) if "-rollout-" in name]
    assert len(copies) == 1 and copies[0].startswith(f"{MODEL}-2_0-rollout-"), copies
    left = leftover_workers(server)  # the old ones leave once their parks end, none restarts
    figures = {
        "requests": len(outcomes),
        "sent_after_switch": len(after),
        "answered_by_old_before_switch": before[old],
        "in_flight_at_switch": across,
        "rollout_seconds": round(run.seconds, 2),
        "old_processes_gone_after_s": left,
        "summary": run.out.splitlines()[-1],
    }
    record_property("rollout", figures)
    print(figures)


def test_sigint_after_the_switch_finishes_the_drain(server: TorchServe, archives: Path) -> None:
    old = default_version(server)
    new = rebuilt(original(server), archives / "v3.mar", "3.0")
    url = f"{server.inference_url}/predictions/{MODEL}"
    with ClosedLoop(url, BODY, clients=CLIENTS, timeout=60) as load:
        load.wait_for(10, timeout=60)
        run = rollout(
            server, new, "--smoke-json", BODY.decode(), signal_after=("default version", SIGINT)
        )
    assert run.code == 128 + SIGINT, run.err
    assert "stopped by SIGINT, after the switch: the rollout to 3.0 finished first" in run.err
    assert any(f"{MODEL} {old}: 2 worker(s) drained, unregistered" in line for line in run.lines_at)
    assert Counter(o.status for o in load.snapshot()) == Counter({200: len(load.snapshot())})
    assert versions(server) == {"3.0": True}
    copies = [name for name in store_files(server) if "-rollout-" in name]
    assert len(copies) == 1 and copies[0].startswith(f"{MODEL}-3_0-rollout-"), copies


def test_an_old_version_that_cannot_be_drained_is_refused_first(
    server: TorchServe, archives: Path
) -> None:
    """A default version whose workers do not catch SIGUSR2 (recycle_on_sigusr1: false) could
    only be stopped with the requests in its hands: the rollout refuses before registering."""
    plain = rebuilt(original(server), archives / "v4.mar", "4.0", recycle_on_sigusr1=False)
    assert rollout(server, plain, "--smoke-json", BODY.decode()).code == 0
    assert versions(server) == {"4.0": True}
    new = rebuilt(original(server), archives / "v10.mar", "10.0")
    run = unchanged_after(server, lambda: rollout(server, new, "--smoke-json", BODY.decode()))
    assert run.code == 1, run.err
    assert f"{MODEL} 4.0: worker " in run.err and "does not catch SIGUSR2" in run.err, run.err
    assert "recycle_on_sigusr1 is false" in run.err and "nothing was changed" in run.err
    assert "registered" not in run.out

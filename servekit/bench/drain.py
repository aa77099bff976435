"""What stopping a server under load costs its clients: TorchServe's own stop against the drain.

    servekit bench-drain          # or: make bench-drain; writes docs/bench/drain.json

Each round starts a TorchServe (free ports, own TMPDIR) serving ``slow_model`` (one worker,
200 ms a request, a queue of 4), puts ``--clients`` closed-loop clients on it
(servekit/bench/closed_loop.py: each request on its own connection, so a request cut off after
it was sent is told apart from one refused at connect), and stops it one of three ways:

- ``torchserve --stop``: TorchServe's own stop (SIGTERM to its frontend);
- ``servekit stop``: drain, then stop (servekit/ops/drain.py);
- ``servekit run`` + SIGTERM to its group (what ``tini -g`` forwards in the images).

Rounds alternate the ways. Per way: requests answered, refused with a 503 + Retry-After,
refused at connect, cut off (the loss), and the seconds from the stop to the server's exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from servekit.bench import command
from servekit.bench.closed_loop import CONNECT_REFUSED, CUT, TIMEOUT, ClosedLoop
from servekit.bench.machine import machine
from servekit.config.specs import load_spec, read_yaml
from servekit.errors import ConfigError
from servekit.ops.frontend import PID_FILE
from servekit.project import Project
from servekit.serve.archive import build
from servekit.serve.management import Management
from servekit.serve.processes import exit_on_sigterm, stop_group
from servekit.serve.server import TorchServe, launcher

MODEL = "slow_model"
BODY = b'{"value": 1.5}'
WAYS = ("torchserve --stop", "servekit stop", "servekit run + SIGTERM")
SERVEKIT = [sys.executable, "-m", "servekit.cli"]


def _until_ready(server: TorchServe, timeout: float = 180) -> None:
    api = Management(server.management_url)
    api.wait_ready(MODEL, timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # slow_model warms up in the background
        metadata = api.entry(MODEL, customized=True).get("customizedMetadata")
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        if isinstance(metadata, dict) and metadata.get("status") == "ready":
            return
        time.sleep(0.2)
    raise ConfigError(f"{MODEL} never became ready")


def _wait_gone(pid: int, timeout: float) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout)


def one_round(
    way: str, project: Project, store: Path, clients: int, workdir: Path
) -> dict[str, Any]:
    server = TorchServe(project.root / "config.properties", workdir, store, [MODEL])
    supervised = way == WAYS[2]
    if supervised:  # the server's own command line, under servekit run
        server.tmpdir.mkdir(parents=True, exist_ok=True)
        server.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *SERVEKIT, "run", "--announce", "1", "--timeout", "30", "--",
            launcher(), "--start", "--foreground", "--ncs",
            "--ts-config", str(server.write_config()), "--model-store", str(store),
        ]  # fmt: skip
        with open(server.log_dir / "console.log", "ab") as console:
            server.process = subprocess.Popen(
                command, cwd=server.workdir, env=server.env(), stdout=console,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
    else:
        server.start()
    try:
        server.wait_until_up()
        _until_ready(server)
        frontend = int((server.tmpdir / PID_FILE).read_text())
        url = f"{server.inference_url}/predictions/{MODEL}"
        with ClosedLoop(url, BODY, clients=clients) as load:
            load.wait_for(10)
            before = load.outcomes()
            started = time.monotonic()
            if way == WAYS[0]:
                subprocess.run(
                    [launcher(), "--stop"], env=server.env(), cwd=server.workdir,
                    capture_output=True, timeout=120, check=False,
                )  # fmt: skip
            elif way == WAYS[1]:
                subprocess.run(
                    [*SERVEKIT, "stop", "--announce", "1", "--timeout", "30"],
                    env=server.env(), cwd=server.workdir, capture_output=True, timeout=120,
                    check=False,
                )  # fmt: skip
            else:
                assert server.process is not None
                os.killpg(server.process.pid, signal.SIGTERM)
                server.process.wait(120)
            _wait_gone(frontend, 120)
            exited = time.monotonic() - started
            deadline = time.monotonic() + 10
            while load.outcomes()[CONNECT_REFUSED] < clients and time.monotonic() < deadline:
                time.sleep(0.1)
        after = load.outcomes()
        during = after - before
        return {
            "way": way,
            "exit_seconds": round(exited, 2),
            "outcomes_during_stop": dict(during),
            "cut": after[CUT] + after[TIMEOUT],
        }
    finally:
        if server.process is not None:
            stop_group(server.process, 30)
            server.process = None


def measure(project: Project, rounds: int, clients: int) -> dict[str, Any]:
    spec_path = project.root / "config" / f"{MODEL}.yml"
    if not spec_path.exists():
        raise ConfigError(
            f"no {spec_path.relative_to(project.root)}: run this in the toolkit's clone"
        )
    store = project.root / "model_store"
    build(
        load_spec(spec_path, project.root),
        read_yaml(project.root / "model-config.yml"),
        project.root,
        store,
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="servekit-bench-drain-") as tmp:
        for turn in range(rounds):
            for index, way in enumerate(WAYS):
                print(f"round {turn + 1}/{rounds}: {way}", file=sys.stderr, flush=True)
                results.append(
                    one_round(way, project, store, clients, Path(tmp) / f"r{turn}-{index}")
                )
    summary = {}
    for way in WAYS:
        mine = [r for r in results if r["way"] == way]
        summary[way] = {
            "rounds": len(mine),
            "cut": sum(r["cut"] for r in mine),
            "answered_during_stop": sum(r["outcomes_during_stop"].get("answered", 0) for r in mine),
            "refused_503": sum(r["outcomes_during_stop"].get("refused_503", 0) for r in mine),
            "exit_seconds": [r["exit_seconds"] for r in mine],
        }
    return {
        "model": MODEL,
        "clients": clients,
        "machine": machine(),
        "summary": summary,
        "rounds": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = command.parser("bench-drain", __doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--out", type=Path, help="default: the project's docs/bench/drain.json")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.clients <= 64:
        parser.error("--rounds must be 1-20 and --clients 1-64")
    exit_on_sigterm()
    project = command.project_of(args)
    results = measure(project, args.rounds, args.clients)
    out: Path = args.out or project.root / "docs" / "bench" / "drain.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

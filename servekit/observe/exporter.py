"""``servekit exporter``: what TorchServe does not export, for Prometheus to scrape.

    servekit exporter                               # http://127.0.0.1:8083/metrics
    servekit exporter --host 0.0.0.0 --log-dir /var/lib/servekit/logs   # a pod's sidecar

Per model (label ``model_name``): workers READY against ``minWorkers``, pending requests in
the job queue, the handler status of each worker, worker restarts and recycles, and whether
the model can load (``servekit_model_loadable``). It polls the management API's plain describe
every ``--interval`` seconds (never the customized one: that waits in the job queue for a
worker, like a prediction) and reads the workers' status files under ``$TMPDIR`` (run it with
the server's ``TMPDIR``, as the same user). A scrape only renders the last poll.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from servekit.health.cli import UsageError, add_access_arguments, base_url, load_keys, seconds_arg
from servekit.health.probe import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    Auth,
    Target,
)
from servekit.observe.collector import ExporterCollector, Watcher

PROG = "servekit exporter"
DEFAULT_PORT = 8083
DEFAULT_INTERVAL = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT, help="(default: %(default)s)")
    parser.add_argument("--inference-url", type=base_url, default=DEFAULT_INFERENCE_URL)
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument(
        "--interval",
        type=seconds_arg(allow_zero=False),
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="poll TorchServe this often (default: %(default)s)",
    )
    parser.add_argument(
        "--log-dir", type=Path, metavar="DIR", help="TorchServe's logs/: initialize failures"
    )
    parser.add_argument(
        "--tmpdir", type=Path, metavar="DIR", help="the server's TMPDIR (default: this one's)"
    )
    add_access_arguments(parser)
    return parser


def port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        auth = Auth() if args.key_file is None else load_keys(args.key_file)
    except UsageError as err:
        parser.error(f"--key-file: {err}")
    target = Target(args.inference_url, args.management_url, args.timeout, auth)
    watcher = Watcher(target, args.log_dir, args.tmpdir)
    registry = CollectorRegistry()
    registry.register(ExporterCollector(watcher))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)  # before the first poll, which may take a while
    signal.signal(signal.SIGINT, on_signal)
    try:  # before the first poll: a busy port is told at once (a scrape meanwhile: no figures)
        server, _ = start_http_server(args.port, args.host, registry)
    except OSError as err:
        print(
            f"{PROG}: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
            file=sys.stderr,
        )
        return 1
    print(f"{PROG}: http://{args.host}:{server.server_port}/metrics", flush=True)
    watcher.poll()
    while not stop.wait(args.interval):
        watcher.poll()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

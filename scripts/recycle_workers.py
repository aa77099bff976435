"""Recycle a model's workers past a memory or request limit, never below minWorkers READY.

    python scripts/recycle_workers.py --model leaky_model --max-memory-mb 800
    python scripts/recycle_workers.py --model iris --max-requests 10000 --every 60

Run it with the server's TMPDIR (request counters live there). Exit codes: 0 done (or
nothing to do), 1 a recycle failed, 2 usage error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servekit.errors import ServerError
from servekit.health.recycle import Limits, Recycler
from servekit.runtime.stats import stats_dir


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--max-memory-mb", type=_positive(float), metavar="MB")
    parser.add_argument("--max-requests", type=_positive(int), metavar="N")
    parser.add_argument("--stats-dir", type=Path, help="default: $TMPDIR/servekit-<uid>/<model>")
    parser.add_argument(
        "--every",
        type=_positive(float),
        metavar="SECONDS",
        help="check again every SECONDS until interrupted (default: once)",
    )
    parser.add_argument("--timeout", type=_positive(float), default=120.0)
    parser.add_argument("--json", action="store_true", help="one JSON line per recycled worker")
    args = parser.parse_args(argv)
    if args.max_memory_mb is None and args.max_requests is None:
        parser.error("give --max-memory-mb, --max-requests or both")
    limits = Limits(args.max_memory_mb, args.max_requests)
    recycler = Recycler(
        args.management_url, args.model, args.stats_dir or stats_dir(args.model), args.timeout
    )
    try:
        while True:
            for done in recycler.run(limits):
                line = (
                    json.dumps(done.__dict__)
                    if args.json
                    else f"{args.model}: worker {done.old_pid} -> {done.new_pid} "
                    f"({done.reason}) in {done.seconds:.1f} s"
                )
                print(line, flush=True)
            if args.every is None:
                return 0
            time.sleep(args.every)
    except requests.ConnectionError as err:
        print(
            f"recycle_workers.py: error: cannot reach {args.management_url}: {err}", file=sys.stderr
        )
        return 3
    except ServerError as err:
        print(f"recycle_workers.py: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

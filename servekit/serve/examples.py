"""``servekit examples``: how to call the models ``make serve`` started, with one live answer each.

    servekit examples                                   # against http://127.0.0.1:8080
    servekit examples --inference-url http://host:8080

Writes ``digit.png`` (a held-out digit) into the project directory for the ``curl`` example.
Exit codes: 0 every model answered, 2 usage error, 3 the server is unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import requests

from servekit import project
from servekit.datasets import digit_png, digits_split

EXAMPLES = """
TorchServe is up. Try:

  curl -s {url}/ping
  curl -s -X POST {url}/predictions/iris -H 'Content-Type: application/json' \\
       -d '{{"features": [5.1, 3.5, 1.4, 0.2]}}'
  curl -s -X POST {url}/predictions/digits -H 'Content-Type: image/png' --data-binary @digit.png
  curl -s -X POST {url}/predictions/empty_model
  curl -s '{mgmt}/models/iris?customized=true'      # handler metadata
  make health                                       # servekit health --customized: exit 0 when READY
  make stop
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servekit examples",
        description="Print example calls of the served models, and one live answer each.",
    )
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    project.add_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = project.from_args(args, check=False).root
    if not root.is_dir():
        parser.error(f"project directory {root} does not exist")
    print(EXAMPLES.format(url=args.inference_url, mgmt=args.management_url))
    digit = digits_split()
    png = root / "digit.png"
    png.write_bytes(digit_png(digit.x_test[0]))
    calls: list[tuple[str, dict[str, Any]]] = [
        ("iris", {"json": {"features": [5.1, 3.5, 1.4, 0.2]}}),
        ("digits", {"data": png.read_bytes(), "headers": {"Content-Type": "image/png"}}),
    ]
    print(f"Live answers ({png.name} is a held-out '{digit.y_test[0]}'):")
    for model, kwargs in calls:
        url = f"{args.inference_url.rstrip('/')}/predictions/{model}"
        try:
            reply = requests.post(url, timeout=10, **kwargs)
        except requests.RequestException as err:
            print(f"  {model}: not reachable ({err.__class__.__name__})")
            print(f"{parser.prog}: error: no answer from {url}: is TorchServe up?", file=sys.stderr)
            return 3
        print(f"  {model}: {reply.status_code} {' '.join(reply.text.split())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print how to call the models `make serve` started, with one live answer each.

python scripts/examples.py [--inference-url URL]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servekit.datasets import digit_png, digits_split  # noqa: E402

EXAMPLES = """
TorchServe is up. Try:

  curl -s {url}/ping
  curl -s -X POST {url}/predictions/iris -H 'Content-Type: application/json' \\
       -d '{{"features": [5.1, 3.5, 1.4, 0.2]}}'
  curl -s -X POST {url}/predictions/digits -H 'Content-Type: image/png' --data-binary @digit.png
  curl -s -X POST {url}/predictions/empty_model
  curl -s '{mgmt}/models/iris?customized=true'      # handler metadata
  make health                                       # exit 0 when every model is READY
  make stop
"""


def main() -> int:
    parser = argparse.ArgumentParser(description="Print example calls of the served models.")
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    args = parser.parse_args()
    print(EXAMPLES.format(url=args.inference_url, mgmt=args.management_url))
    digit = digits_split()
    png = ROOT / "digit.png"
    png.write_bytes(digit_png(digit.x_test[0]))
    calls: list[tuple[str, dict[str, Any]]] = [
        ("iris", {"json": {"features": [5.1, 3.5, 1.4, 0.2]}}),
        ("digits", {"data": png.read_bytes(), "headers": {"Content-Type": "image/png"}}),
    ]
    print(f"Live answers (digit.png is a held-out '{digit.y_test[0]}'):")
    for model, kwargs in calls:
        try:
            reply = requests.post(f"{args.inference_url}/predictions/{model}", timeout=10, **kwargs)
            print(f"  {model}: {reply.status_code} {' '.join(reply.text.split())}")
        except requests.RequestException as err:
            print(f"  {model}: not reachable ({err.__class__.__name__})")
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

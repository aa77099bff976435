"""Check that a running TorchServe can serve: ``/ping``, then each model's READY workers.

The documented health-check script (the Kubernetes and KServe probes run it); the same command
as ``servekit health``, and it needs servekit installed (``pip install torchserve-kit``).

    python scripts/health_check.py                         # every registered model, once
    python scripts/health_check.py --model iris --wait 60  # poll until iris is up (or 60 s)
    python scripts/health_check.py --customized --json --key-file key_file.json

Prints ``ping: Healthy`` and one ``iris: 2/2 workers READY`` line per model (``--json``: one
object). Exit codes: 0 healthy, 1 unhealthy, 2 usage error, 3 server unreachable.
"""

import sys

from servekit.health.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="health_check.py"))

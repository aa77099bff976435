"""CLI: see ``servekit/queue/bridge.py`` (``python scripts/queue_bridge.py --help``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servekit.queue.bridge import main

if __name__ == "__main__":
    sys.exit(main())

"""The one record of "the machine" in every results file a benchmark writes.

Figures only compare on the same machine under the same load, so each results file says what
it ran on: cores, CPU model, memory, the load average when it started, the OS, and the
versions of Python and of the packages the benchmarks drive (``null`` when not installed).

    >>> record = machine()
    >>> sorted(record)  # doctest: +NORMALIZE_WHITESPACE
    ['cpu_model', 'cpus', 'load_average_at_start', 'memory_gb', 'platform', 'python', 'versions']
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchserve", "aiohttp", "litserve", "pika", "redis")


def machine() -> dict[str, object]:
    """What the results were measured on, with the load average at the time of the call."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in PACKAGES},
    }


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Physical memory in GB (``sysconf``), ``None`` where the OS does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 1e9, 1) if pages > 0 and size > 0 else None

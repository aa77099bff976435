"""Serve one archive with given batch settings on a private TorchServe, through its management API.

TorchServe reads ``batchSize``, ``maxBatchDelay`` and the worker count from the archive's
model-config.yml at load; the register API's parameters take precedence over it. The
benchmarks and the tuner use that: one TorchServe started from the project's config with
the model API switched on *for that private server only* (loopback, free ports, own temp
dir), then the archive registered once per setting and unregistered afterwards.

    >>> with batch_server(Path("config.properties"), workdir) as ts:       # doctest: +SKIP
    ...     with registered(ts, "minilm", Setting(16, 10, 1)) as url:
    ...         requests.post(url, json="A man is eating food.")
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from servekit.config.specs import effective_config, load_spec, read_yaml
from servekit.errors import ConfigError, ServerError
from servekit.project import Project
from servekit.serve.server import TorchServe, running


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    """What the frontend batches with: ``batchSize``, ``maxBatchDelay`` (ms), workers."""

    batch_size: int
    max_batch_delay: int
    workers: int

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("max_batch_delay", 0), ("workers", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} is {value!r}; it must be an integer >= {low}")

    @property
    def label(self) -> str:
        return f"bs{self.batch_size}/d{self.max_batch_delay}/w{self.workers}"

    def model_config(self) -> dict[str, int]:
        """The same values as model-config.yml keys (what the tuner writes)."""
        return {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay,
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
        }

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def archived_setting(root: Path, model: str) -> Setting:
    """The setting ``servekit archive`` puts into ``model``'s archive (defaults + its spec)."""
    project = Project(root)
    spec = load_spec(project.spec(model), root)
    config = effective_config(spec, read_yaml(project.model_config) or {})
    return Setting(
        int(config.get("batchSize", 1)),
        int(config.get("maxBatchDelay", 100)),
        int(config.get("minWorkers", 1)),
    )


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Torch threads for each of ``workers`` workers so that they share the cores, not fight.

    Every TorchServe worker runs torch with as many threads as cores by default: two workers on
    2 cores then spin against each other (minilm, batch 8: 134 req/s with one worker, 29 with two
    of two threads each). The frontend passes its environment to the workers, so a server's
    ``OMP_NUM_THREADS`` sets it for all of them.
    """
    return max(1, (cpus or os.cpu_count() or 1) // workers)


def thread_environment(workers: int) -> dict[str, str]:
    threads = str(threads_per_worker(workers))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


@contextlib.contextmanager
def batch_server(
    config: Path, workdir: Path, workers: int = 1, model_store: Path | None = None
) -> Iterator[TorchServe]:
    """A TorchServe from ``config`` with no model loaded and the model API on (private),
    its workers' torch threads set for ``workers`` workers (see :func:`threads_per_worker`),
    registering archives from ``model_store`` (default: the config's)."""
    extra = {"enable_model_api": "true"}
    env = thread_environment(workers)
    with running(
        config, workdir, model_store=model_store, models=[], extra=extra, environment=env
    ) as ts:
        yield ts


def register(ts: TorchServe, model: str, setting: Setting, timeout: float = 300.0) -> float:
    """Register ``model_store/<model>.mar`` with ``setting``; seconds until its workers answer."""
    began = time.monotonic()
    ts.management().register(
        f"{model}.mar",
        workers=setting.workers,
        batch_size=setting.batch_size,
        max_batch_delay=setting.max_batch_delay,
        timeout=timeout,
    )
    # The archive's minWorkers/maxWorkers win over initial_workers: scale to the asked count.
    scale(ts, model, setting, timeout)
    return time.monotonic() - began


def scale(ts: TorchServe, model: str, setting: Setting, timeout: float = 300.0) -> None:
    """Scale a registered ``model`` to ``setting.workers`` READY workers (no more, no fewer),
    served with the asked batch settings (``ServerError`` naming what TorchServe serves)."""
    began = time.monotonic()
    api = ts.management()
    api.scale(model, setting.workers, timeout=timeout)
    remaining = max(0.0, timeout - (time.monotonic() - began))
    api.wait_ready(
        model, setting.workers, remaining, exact=True, until=lambda e: _batching(model, setting, e)
    )


def _batching(model: str, setting: Setting, entry: Mapping[str, Any]) -> bool:
    """True when ``entry`` batches as ``setting`` asks; ``ServerError`` when it does not."""
    served = (entry.get("batchSize"), entry.get("maxBatchDelay"))
    if served != (setting.batch_size, setting.max_batch_delay):
        raise ServerError(
            f"{model}: asked for {setting.label}; TorchServe serves "
            f"batchSize {served[0]}, maxBatchDelay {served[1]}"
        )
    return True


def unregister(ts: TorchServe, model: str, timeout: float = 120.0) -> None:
    """Unregister ``model`` and wait until its workers are gone (synchronously)."""
    ts.management().unregister(model, timeout=timeout)


@contextlib.contextmanager
def registered(ts: TorchServe, model: str, setting: Setting) -> Iterator[str]:
    """``model`` served with ``setting``; yields its predictions URL; unregistered on exit."""
    register(ts, model, setting)
    try:
        yield f"{ts.inference_url}/predictions/{model}"
    finally:
        unregister(ts, model)

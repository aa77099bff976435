"""The real measure of the tuner: trials served on a private TorchServe, measured with loadgen.

:class:`ServedTrials` is the :class:`~servekit.bench.search.Measure` that ``servekit tune``
hands to the searches of :mod:`servekit.bench.search`; the unit tests hand them a recorded
landscape instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from servekit.bench import loadgen
from servekit.bench.search import Level
from servekit.errors import ServerError
from servekit.serve import settings
from servekit.serve.server import TorchServe
from servekit.serve.settings import Setting


def level_of(result: loadgen.LoadResult) -> Level:
    """One closed-loop run as a level of a trial (errors without the 503s, counted apart)."""
    return Level(
        concurrency=result.concurrency or 0,
        goodput_rps=round(result.goodput_rps, 2),
        p95_ms=round(result.latency_ms.p95, 2),
        errors=result.errors - result.count_503,
        count_503=result.count_503,
    )


class ServedTrials:
    """The real measure: ``model`` on a private TorchServe per worker count (its workers' torch
    threads set for that count), re-registered whenever the batch settings change."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        model: str,
        bodies: Sequence[bytes],
        content_type: str,
        duration: float = 3.0,
        warmup: float = 0.5,
        setup_warmup: float = 1.0,
        server_warmup: float = 8.0,
        model_store: Path | None = None,
    ) -> None:
        """``setup_warmup`` seconds of load after each registration and ``server_warmup`` more
        on a fresh server are not measured: a cold JVM made the first trial on a new server
        read half what its neighbours read later (3 s of warmup: minilm batch 4, delay 5, first
        on a two-worker server, 68 req/s; delays 10 and 20 later 129 and 145)."""
        self.config, self.workdir, self.model = config, workdir, model
        self.model_store = model_store  # None: the config's
        self.setup_warmup, self.server_warmup = setup_warmup, server_warmup
        self.bodies, self.content_type = tuple(bodies), content_type
        self.duration, self.warmup = duration, warmup
        self.current: Setting | None = None
        self.server: contextlib.ExitStack | None = None
        self.ts: TorchServe | None = None
        self.servers_started = 0

    def apply(self, setting: Setting) -> None:
        if setting == self.current:
            return
        fresh = self.ts is None or self.current is None or self.current.workers != setting.workers
        if self.ts is not None and not fresh:
            settings.unregister(self.ts, self.model)
        else:
            self.close()
            self.server = contextlib.ExitStack()
            self.servers_started += 1
            workdir = self.workdir / f"server-{self.servers_started}"
            self.ts = self.server.enter_context(
                settings.batch_server(self.config, workdir, setting.workers, self.model_store)
            )
        self.current = None
        settings.register(self.served, self.model, setting)
        self.current = setting
        warmup = self.setup_warmup + (self.server_warmup if fresh else 0.0)
        if warmup > 0:
            concurrency = 2 * setting.batch_size * setting.workers
            loadgen.run(self.target(), loadgen.Load(concurrency=concurrency, duration=warmup))

    @property
    def served(self) -> TorchServe:
        """The server of the current worker count (``apply`` starts it)."""
        if self.ts is None:
            raise ServerError("no TorchServe is running: apply a setting first")
        return self.ts

    def target(self) -> loadgen.Target:
        url = f"{self.served.inference_url}/predictions/{self.model}"
        return loadgen.Target.post(url, self.bodies, self.content_type)

    def __call__(self, setting: Setting, concurrency: int) -> Level:
        self.apply(setting)
        load = loadgen.Load(
            concurrency=concurrency, duration=self.duration + self.warmup, warmup=self.warmup
        )
        return level_of(loadgen.run(self.target(), load))

    def close(self) -> None:
        """Stop the current server (and so its model); safe to call twice."""
        if self.server is not None:
            self.server.close()
        self.server, self.ts, self.current = None, None, None

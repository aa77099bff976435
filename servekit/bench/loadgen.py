"""A light HTTP load generator: the same client for every server compared.

Closed loop (``concurrency`` requests always in flight) or open loop (``rate`` requests per
second on a fixed schedule, at most ``max_in_flight`` at once; a request that could not be
sent on time is counted as ``missed``, never queued). Runs for ``duration`` seconds and/or
``requests`` requests; the first ``warmup`` seconds are left out of the figures.

One asyncio loop with aiohttp and keep-alive connections: on a 2-core machine the client
must leave the cores to the server, so the result reports the client's own CPU use.

    >>> target = Target.post("http://127.0.0.1:8080/predictions/iris",   # doctest: +SKIP
    ...                      [b'{"features": [5.1, 3.5, 1.4, 0.2]}'])
    >>> result = run(target, Load(concurrency=8, duration=10, warmup=2))  # doctest: +SKIP
    >>> result.throughput_rps, result.latency_ms.p95, result.client_cpu_pct  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from servekit.bench.stats import Percentiles, summarize
from servekit.errors import ConfigError

PROGRESS_INTERVAL = 0.5
MAX_IN_FLIGHT = 10_000
"""The most requests one client keeps in flight: each is an open connection (a file
descriptor), and far beyond this the client runs out of memory before it sends anything."""


@dataclass(frozen=True)
class Target:
    """Where to send and what: ``bodies`` are cycled, one per request."""

    url: str
    bodies: tuple[bytes, ...] = (b"",)
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"target url {self.url!r} must start with http:// or https://")
        if not self.bodies:
            raise ConfigError(f"target {self.url}: no request body given; pass at least one")

    @classmethod
    def post(
        cls, url: str, bodies: Sequence[bytes], content_type: str = "application/json"
    ) -> Target:
        return cls(url, tuple(bodies), "POST", (("Content-Type", content_type),))


@dataclass(frozen=True)
class Load:
    """How hard and how long: exactly one of ``concurrency`` and ``rate``."""

    concurrency: int | None = None
    rate: float | None = None
    max_in_flight: int = 256
    duration: float | None = None
    requests: int | None = None
    warmup: float = 0.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ConfigError("give exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_IN_FLIGHT:
            raise ConfigError(
                f"concurrency is {self.concurrency}; expected an integer from 1 to {MAX_IN_FLIGHT}"
            )
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise ConfigError(f"rate is {self.rate}; expected requests per second > 0")
        if self.duration is None and self.requests is None:
            raise ConfigError("unbounded load: give a duration (seconds) or a number of requests")
        if self.duration is not None and not 0 < self.duration < math.inf:
            raise ConfigError(f"duration is {self.duration} s; expected a number of seconds > 0")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"requests is {self.requests}; expected an integer >= 1")
        if not 0 < self.timeout < math.inf:
            raise ConfigError(f"timeout is {self.timeout} s; expected a number of seconds > 0")
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(
                f"max_in_flight is {self.max_in_flight}; expected an integer from 1 to "
                f"{MAX_IN_FLIGHT}"
            )
        if not 0 <= self.warmup < math.inf:
            raise ConfigError(f"warmup is {self.warmup} s; expected a number of seconds >= 0")
        if self.duration is not None and self.warmup >= self.duration:
            raise ConfigError(
                f"warmup ({self.warmup:g} s) is not shorter than the duration "
                f"({self.duration:g} s, warmup included): nothing would be measured"
            )

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def in_flight_cap(self) -> int:
        return self.concurrency if self.concurrency is not None else self.max_in_flight


@dataclass(frozen=True)
class Sample:
    """One request: when it was due, when it finished, its status (None: no HTTP answer)."""

    due: float
    end: float
    status: int | None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.due


@dataclass(frozen=True)
class Progress:
    elapsed: float
    done: int
    errors: int
    in_flight: int


@dataclass(frozen=True)
class LoadResult:
    """The figures of one run; latencies are of 2xx answers only (a 503 is fast, not good)."""

    url: str
    mode: str
    concurrency: int | None
    rate: float | None
    warmup_s: float
    duration_s: float
    requests: int
    ok: int
    status_counts: dict[str, int]
    count_503: int
    errors: int
    error_kinds: dict[str, int]
    missed: int
    max_in_flight: int
    throughput_rps: float
    goodput_rps: float
    latency_ms: Percentiles
    client_cpu_s: float
    client_wall_s: float
    client_cpu_pct: float
    latencies_ms: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON: a figure that does not exist (no 2xx answer, no latency) is ``None``,
        never NaN, which ``json.dumps`` would write as a bare ``NaN`` no JSON parser accepts."""
        data = asdict(self)
        del data["latencies_ms"]
        data["latency_ms"] = {k: _finite(v) for k, v in data["latency_ms"].items()}
        return {k: _finite(v) if isinstance(v, float) else v for k, v in data.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        fields = dict(data)
        latency = {k: math.nan if v is None else v for k, v in fields["latency_ms"].items()}
        fields["latency_ms"] = Percentiles(**latency)
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls.from_dict(json.loads(text))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def tally(
    samples: Sequence[Sample], start: float, *, target: Target, load: Load, extra: Mapping[str, Any]
) -> LoadResult:
    """Figures over the samples that finished at or after ``start`` (the end of warmup)."""
    kept = [s for s in samples if s.end >= start]
    end = max((s.end for s in kept), default=start)
    duration = end - start
    statuses = Counter("error" if s.status is None else str(s.status) for s in kept)
    ok = [s.latency * 1000 for s in kept if s.status is not None and 200 <= s.status < 300]
    per_second = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    return LoadResult(
        url=target.url,
        mode=load.mode,
        concurrency=load.concurrency,
        rate=load.rate,
        warmup_s=load.warmup,
        duration_s=duration,
        requests=len(kept),
        ok=len(ok),
        status_counts=dict(sorted(statuses.items())),
        count_503=statuses.get("503", 0),
        errors=statuses.get("error", 0),
        error_kinds=dict(Counter(s.error for s in kept if s.error is not None)),
        throughput_rps=per_second(len(kept)),
        goodput_rps=per_second(len(ok)),
        latency_ms=summarize(ok),
        latencies_ms=tuple(ok),
        **extra,
    )


class _Runner:
    """One run's state: the session, the samples, what is in flight."""

    def __init__(
        self, target: Target, load: Load, on_progress: Callable[[Progress], None] | None
    ) -> None:
        self.target, self.load, self.on_progress = target, load, on_progress
        self.bodies: Iterator[bytes] = itertools.cycle(target.bodies)
        self.samples: list[Sample] = []
        self.in_flight = self.max_in_flight = self.missed = 0
        self.errors = 0
        self.issued = 0
        self.t0 = time.monotonic()

    def deadline(self) -> float:
        return math.inf if self.load.duration is None else self.t0 + self.load.duration

    def budget_left(self) -> bool:
        within_count = self.load.requests is None or self.issued < self.load.requests
        return within_count and time.monotonic() < self.deadline()

    async def send(self, session: aiohttp.ClientSession, due: float) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status: int | None = None
        error: str | None = None
        try:
            async with session.request(
                self.target.method, self.target.url, data=next(self.bodies)
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            error = type(err).__name__
            self.errors += 1
        finally:
            self.in_flight -= 1
        self.samples.append(Sample(due, time.monotonic(), status, error))

    async def closed_worker(self, session: aiohttp.ClientSession) -> None:
        while self.budget_left():
            self.issued += 1
            await self.send(session, time.monotonic())

    async def open_schedule(self, session: aiohttp.ClientSession, rate: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for i in itertools.count():
            due = self.t0 + i / rate
            if due >= self.deadline() or not self.budget_left():
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.issued += 1
            if self.in_flight >= self.load.max_in_flight:
                self.missed += 1  # the server is behind: drop, do not queue (no hidden backlog)
                continue
            task = asyncio.create_task(self.send(session, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def report_progress(self) -> None:
        while self.on_progress is not None:
            elapsed = time.monotonic() - self.t0
            self.on_progress(Progress(elapsed, len(self.samples), self.errors, self.in_flight))
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def main(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.load.in_flight_cap, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.load.timeout)
        headers = dict(self.target.headers)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers, skip_auto_headers=["User-Agent"]
        ) as session:
            ticker = asyncio.create_task(self.report_progress())
            self.t0 = time.monotonic()
            if self.load.concurrency is not None:
                workers = [self.closed_worker(session) for _ in range(self.load.concurrency)]
                await asyncio.gather(*workers)
            elif self.load.rate is not None:
                await self.open_schedule(session, self.load.rate)
            ticker.cancel()
        if self.on_progress is not None:
            elapsed = time.monotonic() - self.t0
            self.on_progress(Progress(elapsed, len(self.samples), self.errors, 0))


def run(
    target: Target, load: Load, on_progress: Callable[[Progress], None] | None = None
) -> LoadResult:
    """Drive ``target`` with ``load`` and return the figures (client CPU included)."""
    runner = _Runner(target, load, on_progress)
    cpu0, wall0 = time.process_time(), time.monotonic()
    asyncio.run(runner.main())
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    extra = {
        "missed": runner.missed,
        "max_in_flight": runner.max_in_flight,
        "client_cpu_s": cpu,
        "client_wall_s": wall,
        "client_cpu_pct": 100 * cpu / wall if wall > 0 else 0.0,
    }
    return tally(runner.samples, runner.t0 + load.warmup, target=target, load=load, extra=extra)

"""What to do with TorchServe's answer (store it, dead-letter it, retry it) and how long to wait.

Pure functions, so the policy is tested without a server:

    >>> classify(200, b"{}"), classify(400, b"{}"), classify(503, b"{}")
    (<Verdict.DONE: 'done'>, <Verdict.DEAD: 'dead'>, <Verdict.RETRY: 'retry'>)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from enum import Enum

from servekit.errors import ConfigError

# 503: the model's job queue is full (or no worker yet); 502/504: a proxy in between;
# 408/429: timed out or throttled before reaching a worker.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
WORKER_DIED = "worker died"  # TorchServe's 500/507 body when a worker dies mid-request
TIMED_OUT = 504  # the bridge's own answer when TorchServe takes longer than its HTTP timeout
MESSAGE_CHARS = 500  # of an error body kept as the message (bodies can echo the input)


class Verdict(Enum):
    DONE = "done"  # store the answer, acknowledge
    DEAD = "dead"  # store the error, dead-letter the message, acknowledge; never retried
    RETRY = "retry"  # transient: try again after a backoff; never dropped


def error_message(body: bytes) -> str:
    """The ``message`` of TorchServe's JSON error body, else the body as text."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, over-long integers
        parsed = None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace")
    return message[:MESSAGE_CHARS]


def worker_died(status: int, body: bytes) -> bool:
    """TorchServe's answer when the worker serving the request died (killed, crashed, OOM)."""
    return status >= 500 and WORKER_DIED in error_message(body).lower()


def timed_out(status: int) -> bool:
    """A call that outlived a timeout (the bridge's or a proxy's): the request may be the cause."""
    return status == TIMED_OUT


def classify(status: int, body: bytes) -> Verdict:
    """2xx done; 503 and friends, or a dead worker, retried; any other error dead-lettered."""
    if 200 <= status < 300:
        return Verdict.DONE
    if status in RETRY_STATUSES or worker_died(status, body):
        return Verdict.RETRY
    return Verdict.DEAD


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, and how many tries a message gets in all.

    ``RetryPolicy(first_delay=0.05, max_delay=2.0, max_attempts=30, max_worker_deaths=3,
    max_timeouts=2)``: waits of about 0.05, 0.1, 0.2, ... capped at 2 s, so a full queue gets
    about a minute to drain. The counts hold across redeliveries and bridges (the bridge keeps
    them in Redis): after ``max_attempts`` calls, ``max_worker_deaths`` answers "worker died"
    to the request sent alone (a body that kills its worker would otherwise kill it again and
    again), or ``max_timeouts`` timeouts (each copy of a slow request keeps running in
    TorchServe), the message ends in a stored error and a dead letter.
    """

    first_delay: float = 0.05
    max_delay: float = 2.0
    max_attempts: int = 30
    max_worker_deaths: int = 3
    max_timeouts: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ConfigError(
                f"retry delays are first={self.first_delay}, max={self.max_delay}; "
                "expected 0 < first <= max (seconds)"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts is {self.max_attempts}; expected at least 1")
        if self.max_worker_deaths < 1:
            raise ConfigError(f"max_worker_deaths is {self.max_worker_deaths}; expected at least 1")
        if self.max_timeouts < 1:
            raise ConfigError(f"max_timeouts is {self.max_timeouts}; expected at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** min(attempt - 1, 30))
        fraction: float = (rng or random).random()
        return ceiling / 2 + fraction * ceiling / 2

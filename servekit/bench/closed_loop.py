"""A closed-loop client that tells apart what can happen to a request while a server stops,
scales down or changes a model: answered, refused with a 503 before being served, refused at
connect, or cut off after it was sent (the loss the drain exists to prevent).

Each request opens its own connection (``http.client``), so a failure is classified without
guessing: an error while connecting means the request never reached the server; an error
after the request was written means the server took it and never answered. A 503 carrying
``Retry-After`` is honoured, as a well-behaved client does, so a draining server sees each
client once and not in a tight loop.

    with ClosedLoop(url, body, clients=4) as load:
        ...                      # stop the server, scale down, roll out
    load.outcomes()              # Counter({"answered": 812, "refused_503": 4, ...})
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

ANSWERED = "answered"  # any status but a 503 (the test looks at the codes itself)
REFUSED_503 = "refused_503"  # 503 with Retry-After: not accepted, told to come back
CONNECT_REFUSED = "connect_refused"  # nothing listened: never accepted
CUT = "cut"  # sent, then the connection died without an answer: the loss
TIMEOUT = "timeout"  # sent, no answer within the client's timeout


@dataclass(frozen=True)
class Outcome:
    kind: str
    sent: float  # time.monotonic() when the request started
    ended: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    sent_at: float = 0.0  # time.time() when it started: to compare with another process's clock


class ClosedLoop:
    """``clients`` threads, each sending ``body`` to ``url`` again as soon as it has an answer
    (after ``Retry-After`` on a 503), until stopped; ``stop_on_refused`` ends a thread at its
    first refused connection (the server is gone: nothing more to learn)."""

    def __init__(
        self,
        url: str,
        body: bytes,
        clients: int = 4,
        timeout: float = 60.0,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        stop_on_refused: bool = True,
        max_retry_after: float = 2.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.body = body
        self.clients = clients
        self.timeout = timeout
        self.headers = {"Content-Type": content_type, **(headers or {})}
        self.stop_on_refused = stop_on_refused
        self.max_retry_after = max_retry_after
        self.results: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ClosedLoop:
        self._threads = [
            threading.Thread(target=self._client, name=f"closed-loop-{i}", daemon=True)
            for i in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, wait: float | None = None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5 if wait is None else wait)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` requests were answered (the load is under way)."""
        deadline = time.monotonic() + timeout
        while self.outcomes()[ANSWERED] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} answers not reached in {timeout} s: {self.outcomes()}")
            time.sleep(0.02)

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(outcome.kind for outcome in self.results)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.results)

    def _client(self) -> None:
        while not self._stop.is_set():
            outcome = self.send()
            with self._lock:
                self.results.append(outcome)
            if outcome.kind == CONNECT_REFUSED and self.stop_on_refused:
                return
            if outcome.kind == REFUSED_503:
                self._stop.wait(_retry_after(outcome.headers, self.max_retry_after))

    def send(self) -> Outcome:
        """One request on a connection of its own."""
        sent, sent_at = time.monotonic(), time.time()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except OSError as err:
                return Outcome(
                    CONNECT_REFUSED, sent, time.monotonic(), error=repr(err), sent_at=sent_at
                )
            try:
                conn.request("POST", self.path, body=self.body, headers=self.headers)
                response = conn.getresponse()
                body = response.read()
            except TimeoutError as err:
                return Outcome(TIMEOUT, sent, time.monotonic(), error=repr(err), sent_at=sent_at)
            except (OSError, http.client.HTTPException) as err:
                return Outcome(CUT, sent, time.monotonic(), error=repr(err), sent_at=sent_at)
            headers = {k.lower(): v for k, v in response.getheaders()}
            kind = REFUSED_503 if response.status == 503 and "retry-after" in headers else ANSWERED
            return Outcome(
                kind, sent, time.monotonic(), response.status, headers, body, sent_at=sent_at
            )
        finally:
            conn.close()


def _retry_after(headers: dict[str, str], most: float) -> float:
    try:
        return min(max(float(headers.get("retry-after", "1")), 0.0), most)
    except ValueError:
        return 1.0

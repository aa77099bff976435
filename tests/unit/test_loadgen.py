"""servekit.bench.loadgen against a tiny real HTTP server on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from servekit.bench.loadgen import Load, LoadResult, Progress, Target, run
from servekit.bench.stats import Percentiles
from servekit.errors import ConfigError
from servekit.serve.server import free_ports


@dataclass
class Recorder:
    """What the server saw: requests, and the most that were in flight at once."""

    delay: float = 0.005
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[bytes] = field(default_factory=list)


def make_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with recorder.lock:
                recorder.in_flight += 1
                recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
                recorder.bodies.append(body)
            time.sleep(recorder.delay)
            with recorder.lock:
                recorder.in_flight -= 1
            status = 503 if body == b"busy" else 200  # the rule: "busy" bodies get 503
            reply = b'{"ok": true}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(recorder))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/predict", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_counts_per_status_follow_the_server_rule(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    target = Target.post(url, [b"ok", b"ok", b"ok", b"busy"])
    result = run(target, Load(concurrency=4, requests=40))
    assert result.requests == 40
    assert result.status_counts == {"200": 30, "503": 10}
    assert (result.ok, result.count_503, result.errors) == (30, 10, 0)
    assert len(result.latencies_ms) == 30  # latencies of 2xx answers only
    assert sorted(set(recorder.bodies)) == [b"busy", b"ok"]


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_closed_loop_never_exceeds_its_concurrency(
    server: tuple[str, Recorder], concurrency: int
) -> None:
    url, recorder = server
    recorder.delay = 0.02
    result = run(Target.post(url, [b"ok"]), Load(concurrency=concurrency, requests=6 * concurrency))
    assert 1 <= recorder.max_in_flight <= concurrency
    assert result.max_in_flight <= concurrency
    assert result.requests == 6 * concurrency


def test_open_loop_caps_in_flight_and_counts_what_it_could_not_send(
    server: tuple[str, Recorder],
) -> None:
    url, recorder = server
    recorder.delay = 0.2  # 2 in flight x 5/s each = 10 req/s of capacity, 100 req/s offered
    result = run(Target.post(url, [b"ok"]), Load(rate=100, max_in_flight=2, duration=1.0))
    assert recorder.max_in_flight <= 2
    assert result.mode == "open"
    assert result.missed > 0
    assert result.requests + result.missed <= 101


def test_duration_bounds_the_run_loosely(server: tuple[str, Recorder]) -> None:
    url, _ = server
    started = time.monotonic()
    result = run(Target.post(url, [b"ok"]), Load(concurrency=2, duration=0.5, warmup=0.2))
    assert time.monotonic() - started < 30  # bounded; how tightly is not this test's business
    assert result.requests > 0
    assert 0 < result.duration_s < result.client_wall_s
    assert result.client_cpu_s >= 0 and result.client_cpu_pct >= 0


def test_requests_that_get_no_answer_are_errors() -> None:
    (port,) = free_ports(1)  # nothing listens there
    result = run(
        Target.post(f"http://127.0.0.1:{port}/x", [b"ok"]), Load(concurrency=2, requests=4)
    )
    assert (result.requests, result.errors, result.ok) == (4, 4, 0)
    assert result.status_counts == {"error": 4}
    assert sum(result.error_kinds.values()) == 4


def test_progress_is_reported(server: tuple[str, Recorder]) -> None:
    url, _ = server
    seen: list[Progress] = []
    run(Target.post(url, [b"ok"]), Load(concurrency=2, requests=10), seen.append)
    assert seen and seen[-1].done == 10 and seen[-1].in_flight == 0


def test_result_json_round_trip(server: tuple[str, Recorder]) -> None:
    url, _ = server
    result = run(Target.post(url, [b"ok", b"busy"]), Load(concurrency=2, requests=8))
    again = LoadResult.from_json(result.to_json())
    assert again == result
    assert isinstance(again.latency_ms, Percentiles)
    assert "latencies_ms" not in json.loads(result.to_json())


def test_a_result_with_no_2xx_answer_is_strict_json_with_nulls() -> None:
    (port,) = free_ports(1)  # nothing listens there: no latency exists
    result = run(
        Target.post(f"http://127.0.0.1:{port}/x", [b"ok"]), Load(concurrency=1, requests=2)
    )
    text = result.to_json()
    assert "NaN" not in text
    assert json.loads(text)["latency_ms"] == dict.fromkeys(("p50", "p95", "p99", "max", "mean"))
    assert LoadResult.from_json(text).to_json() == text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 1}, "exactly one of concurrency"),
        ({"concurrency": 2, "rate": 5.0, "duration": 1}, "exactly one of concurrency"),
        ({"concurrency": 0, "duration": 1}, "concurrency is 0"),
        ({"rate": -1.0, "duration": 1}, "rate is -1.0"),
        ({"concurrency": 1}, "unbounded load"),
        ({"concurrency": 10_001, "duration": 1}, "concurrency is 10001"),
        ({"concurrency": 1, "duration": 0}, "duration is 0 s"),
        ({"concurrency": 1, "duration": float("inf")}, "duration is inf s"),
        ({"concurrency": 1, "requests": 0}, "requests is 0"),
        ({"concurrency": 1, "duration": 1, "timeout": 0}, "timeout is 0 s"),
        ({"concurrency": 1, "duration": 1, "warmup": 1}, r"warmup \(1 s\) is not shorter"),
        ({"rate": float("nan"), "duration": 1}, "rate is nan"),
    ],
)
def test_bad_loads_are_refused_with_the_reason(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Load(**kwargs)  # type: ignore[arg-type]


def test_target_needs_an_http_url() -> None:
    with pytest.raises(ConfigError, match="must start with http"):
        Target("127.0.0.1:8080/x")

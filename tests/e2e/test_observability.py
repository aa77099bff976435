"""Metrics end to end: TorchServe with ``metrics_mode=prometheus``, ``servekit exporter`` and a
real Prometheus (Debian's) scraping both every 0.5 s; the tests ask Prometheus's HTTP API.

One server for the module (iris, digits, slow_model); the tests run in file order and each one
measures differences, so they do not depend on what an earlier test sent.
"""

from __future__ import annotations

import io
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from servekit.observe.prometheus import Prometheus
from servekit.serve.server import TorchServe, free_ports, running
from servekit.serve.settings import archived_setting
from tests.e2e.conftest import ROOT, describe, wait_ready
from tests.promql import dashboard_exprs, rule_exprs, unknown_names

pytestmark = pytest.mark.e2e

MODELS = ["iris", "digits", "slow_model"]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "torchserve-kit.json"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
IRIS = [5.1, 3.5, 1.4, 0.2]
SLOW_SECONDS = 0.2  # slow_model's delay_ms (config/slow_model.yml)


@dataclass
class Stack:
    server: TorchServe
    exporter: str
    prom: Prometheus
    exporter_process: subprocess.Popen[bytes]

    def alert_seen(self, name: str, model: str | None = None, state: str = "") -> None:
        """Until the alert ``name`` has been pending or firing (``state``: only that one)."""
        labels = f'alertname="{name}"' + (f',model_name="{model}"' if model else "")
        labels += f',alertstate="{state}"' if state else ""
        self.prom.wait_value(f"max(max_over_time(ALERTS{{{labels}}}[10m]))", lambda v: v == 1)

    def predict(self, model: str, body: Any, timeout: float = 30.0) -> requests.Response:
        url = f"{self.server.inference_url}/predictions/{model}"
        if isinstance(body, bytes):
            return requests.post(url, data=body, timeout=timeout)
        return requests.post(url, json=body, timeout=timeout)

    def settled(self, expr: str) -> float:
        """``expr`` once two more scrapes have passed with it unchanged: the final count."""
        last = self.prom.wait_value(expr, lambda v: True)
        while True:
            time.sleep(self.prom.interval * 2.5)  # two scrapes, to see whether it still moves
            now = self.prom.wait_value(expr, lambda v: True)
            if now == last:
                return now
            last = now


@pytest.fixture(scope="module")
def stack(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observe")
    extra = {"metrics_mode": "prometheus", "load_models": ",".join(f"{m}.mar" for m in MODELS)}
    with running(
        ROOT / "config.properties", workdir / "ts", model_store=model_store, extra=extra
    ) as ts:
        wait_ready(ts, MODELS)
        port = free_ports(1)[0]
        exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "servekit.cli",
                "exporter",
                "--port",
                str(port),
                "--interval",
                "0.25",
                "--inference-url",
                ts.inference_url,
                "--management-url",
                ts.management_url,
                "--log-dir",
                str(ts.log_dir),
            ],
            env={**os.environ, "TMPDIR": str(ts.tmpdir)},
        )
        try:
            metrics_host = ts.metrics_url.removeprefix("http://")
            targets = {"torchserve": [metrics_host], "servekit-exporter": [f"127.0.0.1:{port}"]}
            with Prometheus(workdir / "prom", targets, interval=0.5, rule_files=[RULES]) as prom:
                prom.wait_for_targets()
                stack = Stack(ts, f"http://127.0.0.1:{port}", prom, exporter)
                for model, body in (("iris", IRIS), ("slow_model", {"value": 1})):
                    assert stack.predict(model, body).status_code == 200  # series exist
                yield stack
        finally:
            exporter.terminate()
            exporter.wait(10)


def test_request_counters_grow_by_exactly_the_requests_sent(stack: Stack) -> None:
    counters = [
        'sum(ts_inference_requests_total{model_name="iris"})',
        'sum(servekit_responses_total{model_name="iris"})',
        'sum(servekit_request_seconds_count{model_name="iris"})',
    ]
    before = [stack.settled(expr) for expr in counters]
    sent = 23
    codes = Counter(stack.predict("iris", IRIS).status_code for _ in range(sent - 3))
    codes.update(stack.predict("iris", {"not": "a row"}).status_code for _ in range(3))
    assert codes == {200: sent - 3, 400: 3}
    after = [stack.settled(expr) for expr in counters]
    assert [a - b for a, b in zip(after, before, strict=True)] == [sent] * len(counters)
    errors = stack.settled('sum(servekit_responses_total{model_name="iris",code="400"})')
    assert errors >= 3


def bucket_of(seconds: float) -> tuple[float, float]:
    lower = 0.0
    for upper in BUCKETS:
        if seconds <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


def test_p95_from_the_histogram_lies_in_what_the_client_measured(stack: Stack) -> None:
    """slow_model sleeps 200 ms a request, so its handler time is most of what the client
    waits. Prometheus places a quantile only within a bucket (0.1-0.25 s here), and the
    handler's time excludes the frontend's and the network's (on a loaded machine they add
    100 ms), so: the estimate lies between the bucket of the model's own 200 ms and the bucket
    of the client's p95, and the exact mean (``_sum / _count``) between 200 ms and the
    client's slowest answer."""
    count = 'sum(servekit_request_seconds_count{model_name="slow_model"})'
    total = 'sum(servekit_request_seconds_sum{model_name="slow_model"})'
    n0, s0 = stack.settled(count), stack.settled(total)
    client: list[float] = []
    for i in range(20):
        started = time.perf_counter()
        assert stack.predict("slow_model", {"value": i}).status_code == 200
        client.append(time.perf_counter() - started)
    n1, s1 = stack.settled(count), stack.settled(total)
    assert n1 - n0 == len(client)
    mean = (s1 - s0) / (n1 - n0)
    assert SLOW_SECONDS <= mean <= max(client), (mean, min(client), max(client))
    window = f"{max(10, int(sum(client)) + 5)}s"
    p95 = stack.prom.value(
        "histogram_quantile(0.95, sum by (le) (increase("
        f'servekit_request_seconds_bucket{{model_name="slow_model"}}[{window}])))'
    )
    client_p95 = statistics.quantiles(client, n=20)[18]
    lower, upper = bucket_of(SLOW_SECONDS)[0], bucket_of(client_p95)[1]
    assert p95 is not None and lower <= p95 <= upper, (p95, client_p95, min(client), max(client))


def test_a_fast_models_p95_is_never_above_what_the_client_saw(stack: Stack) -> None:
    """digits answers in a few ms, less than the HTTP round trip around it."""
    client: list[float] = []
    png = io.BytesIO()
    Image.new("L", (8, 8), 128).save(png, format="PNG")
    for _ in range(30):
        started = time.perf_counter()
        response = stack.predict("digits", png.getvalue())
        client.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    stack.settled('sum(servekit_request_seconds_count{model_name="digits"})')
    buckets = 'servekit_request_seconds_bucket{model_name="digits"}'
    p95 = stack.prom.value(f"histogram_quantile(0.95, sum by (le) ({buckets}))")
    client_p95 = statistics.quantiles(client, n=20)[18]
    assert p95 is not None and 0 < p95 <= bucket_of(client_p95)[1], (p95, client_p95)


def test_ready_gauge_drops_when_a_worker_is_killed_and_comes_back(stack: Stack) -> None:
    ready = 'servekit_model_workers_ready{model_name="iris"}'
    restarts = 'servekit_worker_restarts_total{model_name="iris"}'
    workers = archived_setting(ROOT, "iris").workers  # as many as its (tuned) spec says
    assert stack.prom.wait_value(ready, lambda v: v == workers) == workers
    before = stack.settled(restarts)
    os.kill(describe(stack.server, "iris")["workers"][0]["pid"], signal.SIGKILL)
    stack.prom.wait_value(f"min_over_time({ready}[1m])", lambda v: v == workers - 1, timeout=60)
    stack.prom.wait_value(ready, lambda v: v == workers, timeout=120)
    assert stack.settled(restarts) == before + 1
    assert stack.predict("iris", IRIS).status_code == 200
    stack.alert_seen("ServekitModelNotReady", "iris")  # pending: it fires after 5 min
    stack.alert_seen("ServekitWorkerRestarts", "iris", state="firing")


def test_queue_gauge_rises_under_a_burst_that_gets_503s(stack: Stack) -> None:
    """slow_model: one worker, 200 ms a request, a job queue of 4: twelve clients overflow it.
    The exporter keeps answering with the queue full (it never waits in it)."""
    pending = 'servekit_model_pending_requests{model_name="slow_model"}'
    server_5xx = "sum(Requests5XX) or vector(0)"  # TorchServe makes it at the first 5xx
    before = stack.settled(server_5xx)
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 4.0

    def client() -> None:
        while time.monotonic() < stop:
            code = stack.predict("slow_model", {"value": 1}).status_code
            with lock:
                codes[code] += 1

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    peak = stack.prom.wait_value(pending, lambda v: v >= 3, timeout=20)
    assert requests.get(f"{stack.exporter}/metrics", timeout=5).status_code == 200
    for thread in threads:
        thread.join()
    assert set(codes) <= {200, 503} and codes[503] > 0, codes
    assert peak >= 3
    assert stack.prom.wait_value(pending, lambda v: v == 0) == 0
    assert stack.settled(server_5xx) - before == codes[503]
    stack.alert_seen("ServekitJobQueueSaturated", "slow_model")
    stack.alert_seen("TorchServe5xxRatioHigh")


def test_an_outage_shows_as_5xx_and_a_degraded_handler(stack: Stack) -> None:
    """slow_model's outage drill: while its file exists every batch fails (500)."""
    degraded = 'servekit_handler_workers{model_name="slow_model",status="degraded"}'
    ready = 'servekit_handler_workers{model_name="slow_model",status="ready"}'
    outage = stack.server.tmpdir / "slow_model.outage"
    outage.touch()
    try:
        codes = Counter(stack.predict("slow_model", {"value": 1}).status_code for _ in range(4))
        assert codes == {500: 4}
        stack.prom.wait_value(degraded, lambda v: v == 1)
        stack.alert_seen("ServekitModel5xxRatioHigh", "slow_model")
    finally:
        outage.unlink()
    deadline = time.monotonic() + 30
    while stack.predict("slow_model", {"value": 1}).status_code != 200:
        assert time.monotonic() < deadline, "slow_model still failing after its outage"
    stack.prom.wait_value(ready, lambda v: v == 1)


def test_every_dashboard_and_rule_query_names_a_scraped_metric(stack: Stack) -> None:
    """Run after the tests above: some series exist only once they happened (Requests5XX)."""
    series = stack.prom.query('group by (__name__) ({__name__=~".+"})')
    scraped = {s["metric"]["__name__"] for s in series}
    assert {"ts_inference_requests_total", "servekit_model_workers_ready"} <= scraped
    exprs = dashboard_exprs(DASHBOARD) + rule_exprs(RULES)
    assert unknown_names(exprs, scraped, RULES) == set()


def test_a_stopped_exporter_and_a_stopped_server_raise_their_alerts(stack: Stack) -> None:
    """Last: it stops the module's exporter, then TorchServe."""
    stack.exporter_process.terminate()
    assert stack.exporter_process.wait(10) == 0
    stack.prom.wait_value('up{job="servekit-exporter"}', lambda v: v == 0)
    stack.alert_seen("ServekitExporterDown")
    stack.server.stop()
    stack.prom.wait_value('up{job="torchserve"}', lambda v: v == 0)
    stack.alert_seen("TorchServeDown")

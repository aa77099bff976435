"""A private Prometheus server (Debian's ``prometheus``) for tests, benchmarks and a local look.

    with Prometheus(workdir, {"torchserve": ["127.0.0.1:8082"]}) as prom:
        prom.wait_for_targets()
        prom.value('sum(ts_inference_requests_total{model_name="iris"})')

Its own loopback port, config and data directory under ``workdir``; stopped on exit, also on
failure. Queries go through the HTTP API (``/api/v1/query``), as Grafana's would.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

from servekit.errors import ToolkitError
from servekit.serve.server import free_ports

POLL = 0.25


class PrometheusError(ToolkitError):
    """Prometheus is missing, did not start, or answered a query with an error."""


@dataclass
class Prometheus:
    workdir: Path
    targets: Mapping[str, Sequence[str]]
    """Scrape job name to ``host:port`` targets (each scraped at ``/metrics``)."""
    interval: float = 1.0
    rule_files: Sequence[Path] = ()
    binary: str = "prometheus"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.port = self.port or free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        every = f"{max(int(self.interval * 1000), 100)}ms"
        return {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(Path(p).resolve()) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                for job, hosts in self.targets.items()
            ],
        }

    def start(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise PrometheusError(f"{self.binary} not found: `make prometheus` installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def wait_until_up(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.log_tail()}")
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        self.wait(ready, timeout, "prometheus ready")

    def wait_for_targets(self, timeout: float = 60.0) -> None:
        """Until every target was scraped successfully at least once."""

        def all_up() -> bool:
            active = self._api("targets")["activeTargets"]
            return bool(active) and all(t["health"] == "up" for t in active)

        self.wait(all_up, timeout, "every scrape target up")

    def query(self, expr: str) -> list[dict[str, Any]]:
        result = self._api("query", {"query": expr})
        return list(result["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it has no series."""
        series = self.query(expr)
        if not series:
            return None
        if len(series) > 1:
            raise PrometheusError(f"{expr!r} gave {len(series)} series, expected one")
        number = float(series[0]["value"][1])
        return None if math.isnan(number) else number

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return list(self._api("alerts")["alerts"])

    def wait_value(
        self, expr: str, accept: Callable[[float], bool], timeout: float = 30.0
    ) -> float:
        """Poll ``expr`` until its value satisfies ``accept``; return that value."""
        seen: list[float | None] = []

        def ok() -> bool:
            value = self.value(expr)
            seen[:] = [value]
            return value is not None and accept(value)

        self.wait(ok, timeout, f"{expr} (last value {seen})")
        return float(seen[0])  # type: ignore[arg-type]

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise PrometheusError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(POLL)

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
            document = response.json()
        except (requests.RequestException, ValueError) as err:
            raise PrometheusError(f"prometheus API {path}: {err}") from err
        if document.get("status") != "success":
            raise PrometheusError(f"prometheus API {path}: {document.get('error', document)}")
        return document["data"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Prometheus:
        self.start()
        try:
            self.wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

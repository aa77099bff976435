"""Probing a running TorchServe: ``/ping`` on the inference API, then the model list and each
model's describe through the management client (:class:`servekit.serve.management.Management`,
so auth and transport errors are handled once). The verdicts are :mod:`servekit.health.verdict`'s.

    >>> from servekit.health.probe import Target, probe
    >>> report = probe(Target("http://127.0.0.1:8080", "http://127.0.0.1:8081"))  # doctest: +SKIP
    >>> report.healthy, [m.reason for m in report.models]  # doctest: +SKIP
    (True, ['2/2 workers READY'])

``probe`` never raises for server trouble: no answer is an ``unreachable`` report (exit 3), a
wrong answer an unhealthy one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests

from servekit.errors import Unreachable
from servekit.health.initlog import last_init_error
from servekit.health.verdict import (
    HealthReport,
    MalformedResponse,
    ModelHealth,
    PingResult,
    evaluate_describe,
    not_registered,
    parse_model_page,
    plan_checks,
)
from servekit.serve.management import Management, ManagementUnreachable, model_path

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
PAGE_LIMIT = 100
MAX_PAGES = 1000  # 100,000 models: a model list that goes on past this never ends


class ServerUnreachable(Unreachable):
    """``/ping`` or the management API did not answer at all (exit 3)."""


@dataclass(frozen=True)
class Auth:
    """Bearer keys from TorchServe's ``key_file.json``; ``None`` when token auth is off."""

    inference: str | None = None
    management: str | None = None


@dataclass(frozen=True)
class Target:
    """Where the server listens and how to talk to it."""

    inference_url: str = DEFAULT_INFERENCE_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    timeout: float = DEFAULT_TIMEOUT
    auth: Auth = field(default_factory=Auth)


def probe(
    target: Target,
    models: Sequence[str] = (),
    *,
    customized: bool = False,
    mode: str = "default",
    log_dir: Path | None = None,
) -> HealthReport:
    """One full check: ping, list, describe each model. Never raises for server trouble.

    ``mode="liveness"`` only pings: a slow or saturated model is no reason to restart.
    With ``log_dir`` (TorchServe's ``logs/``), a model short of READY workers also shows
    the reason its ``initialize`` last failed.
    """
    with requests.Session() as session:
        client = _Client(session, target, mode)
        try:
            ping = client.ping()
        except ServerUnreachable as err:
            return HealthReport(None, error=str(err), unreachable=True, mode=mode)
        if mode == "liveness":
            return HealthReport(ping, mode=mode)
        try:
            checks = plan_checks(models, client.list_models())
            results = tuple(
                with_init_error(client.describe(name, customized), log_dir)
                if known
                else not_registered(name)
                for name, known in checks
            )
        except ServerUnreachable as err:
            return HealthReport(ping, error=str(err), unreachable=True, mode=mode)
        except MalformedResponse as err:
            return HealthReport(ping, error=f"model list failed: {err}", mode=mode)
    return HealthReport(ping, results, mode=mode)


def with_init_error(model: ModelHealth, log_dir: Path | None) -> ModelHealth:
    """Add the logged reason of the model's last ``initialize`` failure, if it is not up."""
    if log_dir is None or model.ready >= max(model.min_workers, 1):
        return model
    error = last_init_error(log_dir, model.name)
    if error is None:
        return model
    return replace(model, reason=f"{model.reason}, init error: {error}", init_error=error)


def http_reason(status_code: int, body: object) -> str:
    """A short reason for a non-success answer, with TorchServe's own message if any."""
    if status_code == 400:  # TorchServe's answer to a missing, wrong or expired token
        return "authorization rejected (400)"
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status_code}: {message}" if message else f"HTTP {status_code}"


def wait_until_healthy(
    check: Callable[[], HealthReport],
    wait: float,
    interval: float = POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> HealthReport:
    """Repeat ``check`` until healthy or ``wait`` seconds passed; return the last report."""
    deadline = clock() + wait
    while True:
        report = check()
        remaining = deadline - clock()
        if report.healthy or remaining <= 0:
            return report
        sleep(min(interval, remaining))


class _QueueFull(Exception):
    """The customized describe got 503: it waits in the model's full job queue."""


class _Client:
    """The probe's calls: ``/ping`` itself, the management API through ``Management``."""

    def __init__(self, session: requests.Session, target: Target, mode: str = "default") -> None:
        self.session = session
        self.target = target
        self.mode = mode
        self.api = Management(
            target.management_url, target.auth.management, target.timeout, session=session
        )

    def ping(self) -> PingResult:
        url = f"{self.target.inference_url}/ping"
        key = self.target.auth.inference
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self.session.get(url, headers=headers, timeout=self.target.timeout)
        except requests.RequestException as err:
            raise _unreachable(url, err, self.target.timeout) from None
        body = _json(response)
        if response.status_code == 400:
            return PingResult(400, http_reason(400, body))
        status = body.get("status") if isinstance(body, dict) else None
        return PingResult(response.status_code, str(status) if status else "non-JSON answer")

    def list_models(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            params = {"limit": str(PAGE_LIMIT), "next_page_token": token} if token else None
            response = self._get("/models", params)
            if response.status_code != 200:
                raise MalformedResponse(http_reason(response.status_code, _json(response)))
            page, token = parse_model_page(_json(response))
            names += page
            if not page or token is None or token in seen:
                return names
            seen.add(token)
            if len(seen) >= MAX_PAGES:
                raise MalformedResponse(f"the model list did not end after {MAX_PAGES} pages")

    def describe(self, name: str, customized: bool) -> ModelHealth:
        if not customized:
            return self._describe(name, customized)
        plain = self._describe(name, customized=False)
        if plain.ready == 0:  # describe_handle would wait in the queue for a worker, in vain
            return plain
        try:
            return self._describe(name, customized)
        except _QueueFull:
            reason = f"{plain.reason}, handler status unknown: describe got 503 (job queue full)"
            return replace(plain, healthy=False, reason=reason)

    def _describe(self, name: str, customized: bool) -> ModelHealth:
        params = {"customized": "true"} if customized else None
        try:
            response = self._get(model_path(name), params, slow_ok=True)
        except requests.ReadTimeout:  # a busy handler's describe_handle waits in the job queue
            return ModelHealth(name, False, f"describe timed out after {self.target.timeout:g} s")
        body = _json(response)
        if response.status_code == 404:
            return not_registered(name)
        if response.status_code == 400:
            return ModelHealth(name, False, http_reason(400, body))
        if response.status_code == 503 and customized:
            raise _QueueFull(name)
        if response.status_code != 200:
            reason = http_reason(response.status_code, body)
            return ModelHealth(name, False, f"describe failed: {reason}")
        if body is None:
            return ModelHealth(name, False, "describe failed: answer is not JSON")
        return evaluate_describe(name, body, customized, self.mode)

    def _get(
        self, path: str, params: Mapping[str, str] | None = None, slow_ok: bool = False
    ) -> requests.Response:
        """GET on the management API; no connection (or, unless ``slow_ok``, no answer in
        time) is ``ServerUnreachable``; a slow answer with ``slow_ok`` is ``ReadTimeout``."""
        try:
            return self.api.request("GET", path, params)
        except ManagementUnreachable as err:
            cause = err.__cause__
            if slow_ok and isinstance(cause, requests.ReadTimeout):
                raise cause from None
            url = f"{self.api.url}{path}"
            if not isinstance(cause, requests.RequestException):
                raise ServerUnreachable(f"cannot reach {url}: {err}") from None
            raise _unreachable(url, cause, self.target.timeout) from None


def _unreachable(url: str, err: requests.RequestException, timeout: float) -> ServerUnreachable:
    if isinstance(err, requests.ReadTimeout):
        return ServerUnreachable(f"no answer from {url} within {timeout:g} s")
    return ServerUnreachable(f"cannot reach {url}: {_explain(err)}")


def _json(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _explain(err: requests.RequestException) -> str:
    if isinstance(err, requests.Timeout):
        return "connection timed out"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
    return match.group(1).strip().lower() if match else type(err).__name__

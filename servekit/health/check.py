"""Is a running TorchServe able to serve? ``/ping``, then every model's workers.

``/ping`` alone is not enough: it stays 200 while a crash-looping worker has retries left, and
says Healthy when a model failed to register. So each model is described as well, and counts as
healthy only when at least ``max(minWorkers, 1)`` of its workers are ``READY``; with
``customized=True`` its handler's own ``describe_handle()`` status must also be ``"ready"``.

    >>> from servekit.health.check import Target, probe, render_text
    >>> report = probe(Target("http://127.0.0.1:8080", "http://127.0.0.1:8081"))  # doctest: +SKIP
    >>> print(render_text(report))  # doctest: +SKIP
    ping: Healthy
    iris: 2/2 workers READY

The pieces are separate so that probe modes (startup, readiness, liveness) and queue-saturation
reports can be added later: ``probe`` does the HTTP, ``evaluate_model`` is pure, and
``render_text`` / ``render_json`` only format a ``HealthReport``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests

from servekit.errors import ConfigError, ServerError
from servekit.health.initlog import last_init_error

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
PAGE_LIMIT = 100
READY = "READY"
HANDLER_READY = "ready"
PROG = "health_check.py"
PROBES = ("default", "startup", "readiness", "liveness")
PROBE_HELP = (
    "startup: every model has minWorkers READY (and, with --customized, its handler is ready: "
    "warmed up); readiness: the same and no model's job queue is full; liveness: fails only "
    "when the frontend is down or a model has failed for good (/ping 500 after its "
    "maxRetryTimeoutInSec); default: like startup, and reports queue saturation"
)


class UsageError(ConfigError):
    """A bad option value or key file (exit 2); the message names what to fix."""


class ServerUnreachable(ServerError):
    """``/ping`` or the management API did not answer at all (exit 3)."""


class MalformedResponse(ServerError):
    """TorchServe answered, but not with the JSON shape it documents."""


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


@dataclass(frozen=True)
class PingResult:
    status_code: int
    status: str

    @property
    def healthy(self) -> bool:
        return self.status_code == 200


@dataclass(frozen=True)
class QueueStatus:
    remaining_capacity: int
    pending_requests: int


@dataclass(frozen=True)
class ModelHealth:
    """One model's verdict; ``reason`` is the human summary (also set when healthy)."""

    name: str
    healthy: bool
    reason: str
    ready: int = 0
    workers: int = 0
    min_workers: int = 0
    states: tuple[str, ...] = ()
    queue: QueueStatus | None = None
    handler_status: str | None = None


@dataclass(frozen=True)
class HealthReport:
    """The whole server; ``error`` says why models could not be listed or reached."""

    ping: PingResult | None
    models: tuple[ModelHealth, ...] = ()
    error: str | None = None
    unreachable: bool = False
    mode: str = "default"

    @property
    def healthy(self) -> bool:
        if self.mode == "liveness":
            return not self.unreachable and self.ping is not None and self.ping.healthy
        return (
            not self.unreachable
            and self.error is None
            and self.ping is not None
            and self.ping.healthy
            and all(m.healthy for m in self.models)
        )

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_HEALTHY if self.healthy else EXIT_UNHEALTHY


# --- pure evaluation of describe documents -------------------------------------------------


def evaluate_model(
    entry: Mapping[str, object], customized: bool = False, mode: str = "default"
) -> ModelHealth:
    """Judge one describe entry (one element of ``GET /models/{name}``'s list)."""
    raw_name = entry.get("modelName")
    name = raw_name if isinstance(raw_name, str) else "?"
    try:
        return _evaluate(name, entry, customized, mode)
    except MalformedResponse as err:
        return ModelHealth(name, False, f"unexpected describe response: {err}")


def evaluate_describe(
    name: str, document: object, customized: bool = False, mode: str = "default"
) -> ModelHealth:
    """Judge the decoded body of ``GET /models/{name}``; a wrong shape is unhealthy, not a crash."""
    try:
        entry = select_entry(document)
    except MalformedResponse as err:
        return ModelHealth(name, False, f"unexpected describe response: {err}")
    return replace(evaluate_model(entry, customized, mode), name=name)


def select_entry(document: object, version: str | None = None) -> Mapping[str, object]:
    """The entry for ``version``, else the first: unversioned describe lists only the default."""
    if not isinstance(document, list) or not document:
        raise MalformedResponse(f"expected a non-empty JSON list, got {_kind(document)}")
    entries = [e for e in document if isinstance(e, dict)]
    if len(entries) != len(document):
        raise MalformedResponse("expected a list of JSON objects")
    matching = [e for e in entries if version is not None and e.get("modelVersion") == version]
    return (matching or entries)[0]


def not_registered(name: str) -> ModelHealth:
    return ModelHealth(name, False, "not registered")


def _evaluate(name: str, entry: Mapping[str, object], customized: bool, mode: str) -> ModelHealth:
    states = _worker_states(entry.get("workers"))
    min_workers = _int_field(entry, "minWorkers")
    ready = states.count(READY)
    others = tuple(dict.fromkeys(s for s in states if s != READY))
    healthy = ready >= max(min_workers, 1)
    reason = _workers_summary(ready, len(states), min_workers, others)
    queue = _queue(entry.get("jobQueueStatus"))
    if queue is not None and (queue.pending_requests or not queue.remaining_capacity):
        reason += f", {_queue_text(queue)}"
        if mode == "readiness" and not queue.remaining_capacity:
            healthy = False
    handler_status = None
    if customized:
        handler_status, detail = handler_check(entry.get("customizedMetadata"))
        healthy = healthy and handler_status == HANDLER_READY
        reason = f"{reason}, {detail}"
    return ModelHealth(
        name,
        healthy,
        reason,
        ready=ready,
        workers=len(states),
        min_workers=min_workers,
        states=others,
        queue=queue,
        handler_status=handler_status,
    )


def _queue_text(queue: QueueStatus) -> str:
    if not queue.remaining_capacity:
        return f"job queue full ({queue.pending_requests} pending): new requests get 503"
    return f"job queue {queue.pending_requests} pending, {queue.remaining_capacity} free"


def _workers_summary(ready: int, total: int, min_workers: int, others: Sequence[str]) -> str:
    text = f"{ready}/{total} workers {READY}"
    if others:
        text += f" ({', '.join(others)})"
    required = max(min_workers, 1)
    if ready < required and required != total:
        text += f", need {required}"
    if 0 < ready < required:
        text += ", degraded"
    return text


def handler_check(metadata: object) -> tuple[str | None, str]:
    """The handler's ``status`` from ``customizedMetadata`` (a JSON string) and a summary."""
    if metadata is None:
        return None, "no customizedMetadata (does the handler define describe_handle?)"
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return None, "customizedMetadata is not JSON"
    if not isinstance(metadata, dict):
        return None, f"customizedMetadata is {_kind(metadata)}, not a JSON object"
    status = metadata.get("status")
    if not isinstance(status, str):
        return None, "customizedMetadata has no string 'status'"
    return status, f"handler status {status}"


def _worker_states(workers: object) -> list[str]:
    if workers is None:
        return []
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise MalformedResponse(f"'workers' should be a list of objects, got {_kind(workers)}")
    return [str(w.get("status", "UNKNOWN")) for w in workers]


def _int_field(entry: Mapping[str, object], key: str) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResponse(f"'{key}' should be an integer, got {value!r}")
    return value


def _queue(value: object) -> QueueStatus | None:
    if not isinstance(value, dict):
        return None
    capacity, pending = value.get("remainingCapacity"), value.get("pendingRequests")
    if isinstance(capacity, int) and isinstance(pending, int):
        return QueueStatus(capacity, pending)
    return None


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "no JSON"}
    return names.get(type(value), type(value).__name__)


# --- listing ---------------------------------------------------------------------------------


def parse_model_page(document: object) -> tuple[list[str], str | None]:
    """Names and ``nextPageToken`` from one page of ``GET /models``."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise MalformedResponse(
            f"model list should be an object with a 'models' list, got {_kind(document)}"
        )
    names = [
        m["modelName"]
        for m in document["models"]
        if isinstance(m, dict) and isinstance(m.get("modelName"), str)
    ]
    token = document.get("nextPageToken")
    return names, (str(token) if token not in (None, "") else None)


def plan_checks(requested: Sequence[str], registered: Sequence[str]) -> list[tuple[str, bool]]:
    """Which models to check, each with whether it is registered (requested order, no repeats)."""
    names = list(dict.fromkeys(requested)) if requested else list(dict.fromkeys(registered))
    known = set(registered)
    return [(name, name in known) for name in names]


# --- HTTP ------------------------------------------------------------------------------------


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
    return model if error is None else replace(model, reason=f"{model.reason}, init error: {error}")


def http_reason(status_code: int, body: object) -> str:
    """A short reason for a non-success answer, with TorchServe's own message if any."""
    if status_code == 400:  # TorchServe's answer to a missing, wrong or expired token
        return "authorization rejected (400)"
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status_code}: {message}" if message else f"HTTP {status_code}"


class _QueueFull(Exception):
    """The customized describe got 503: it waits in the model's full job queue."""


@dataclass(frozen=True)
class _Client:
    session: requests.Session
    target: Target
    mode: str = "default"

    def ping(self) -> PingResult:
        response = self._get(f"{self.target.inference_url}/ping", self.target.auth.inference)
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
            response = self._get_management("/models", params)
            if response.status_code != 200:
                raise MalformedResponse(http_reason(response.status_code, _json(response)))
            page, token = parse_model_page(_json(response))
            names += page
            if not page or token is None or token in seen:
                return names
            seen.add(token)

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
            response = self._get_management(f"/models/{quote(name, safe='')}", params, True)
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

    def _get_management(
        self, path: str, params: dict[str, str] | None = None, slow_ok: bool = False
    ) -> requests.Response:
        url = f"{self.target.management_url}{path}"
        return self._get(url, self.target.auth.management, params, slow_ok)

    def _get(
        self,
        url: str,
        key: str | None,
        params: dict[str, str] | None = None,
        slow_ok: bool = False,
    ) -> requests.Response:
        """GET; no connection (or, unless ``slow_ok``, no answer in time) is unreachable."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            return self.session.get(
                url, params=params, headers=headers, timeout=self.target.timeout
            )
        except requests.ReadTimeout:
            if slow_ok:
                raise
            raise ServerUnreachable(
                f"no answer from {url} within {self.target.timeout:g} s"
            ) from None
        except requests.RequestException as err:
            raise ServerUnreachable(f"cannot reach {url}: {_explain(err)}") from None


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


# --- waiting ---------------------------------------------------------------------------------


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


# --- rendering -------------------------------------------------------------------------------


def render_text(report: HealthReport) -> str:
    """``ping: Healthy`` then one ``name: summary`` line per model."""
    lines = [] if report.ping is None else [f"ping: {_ping_text(report.ping)}"]
    if report.unreachable:
        lines.append(f"unreachable: {report.error}")
    elif report.mode == "liveness":
        lines.append("models: not checked by the liveness probe (only /ping)")
    elif report.error is not None:
        lines.append(f"models: {report.error}")
    elif not report.models:
        lines.append("models: no models registered")
    lines += [f"{m.name}: {m.reason}" for m in report.models]
    return "\n".join(lines)


def _ping_text(ping: PingResult) -> str:
    if ping.healthy or ping.status_code == 400:
        return ping.status
    return f"{ping.status_code} {ping.status}"


def report_to_dict(report: HealthReport) -> dict[str, object]:
    ping = report.ping
    return {
        "probe": report.mode,
        "healthy": report.healthy,
        "exit_code": report.exit_code,
        "ping": None if ping is None else {"status_code": ping.status_code, "status": ping.status},
        "models": [_model_dict(m) for m in report.models],
        "error": report.error,
    }


def _model_dict(model: ModelHealth) -> dict[str, object]:
    queue = model.queue
    return {
        "name": model.name,
        "healthy": model.healthy,
        "ready": model.ready,
        "workers": model.workers,
        "min_workers": model.min_workers,
        "states": list(model.states),
        "queue": None
        if queue is None
        else {
            "remainingCapacity": queue.remaining_capacity,
            "pendingRequests": queue.pending_requests,
        },
        "handler_status": model.handler_status,
        "reason": model.reason,
    }


def render_json(report: HealthReport) -> str:
    return json.dumps(report_to_dict(report))


# --- configuration at the edge ---------------------------------------------------------------


def load_keys(path: Path) -> Auth:
    """Read TorchServe's ``key_file.json``; any problem is a ``UsageError`` naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(
            f"cannot read key file {path}: {err.strerror or err}; TorchServe "
            "writes key_file.json in the directory it was started from"
        ) from None
    except ValueError as err:
        raise UsageError(f"key file {path} is not valid JSON: {err}") from None
    return Auth(
        inference=_key(document, "inference", path), management=_key(document, "management", path)
    )


def _key(document: object, api: str, path: Path) -> str:
    section = document.get(api) if isinstance(document, dict) else None
    key = section.get("key") if isinstance(section, dict) else None
    if not isinstance(key, str) or not key:
        raise UsageError(
            f"key file {path} has no string '{api}.key'; expected TorchServe's "
            f'layout {{"{api}": {{"key": "..."}}, ...}}'
        )
    return key


def base_url(value: str) -> str:
    """A validated ``http(s)://host[:port]`` base URL without trailing slash."""
    if "://" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} has no scheme; did you mean 'http://{value}'?")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(
            f"{value!r} has scheme {parts.scheme!r}; use http:// or https://, "
            f"e.g. {DEFAULT_INFERENCE_URL}"
        )
    try:
        parts.port  # noqa: B018 -- raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} has an invalid port") from None
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} has no host; e.g. {DEFAULT_INFERENCE_URL}")
    return value.rstrip("/")


def _seconds(allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            allowed = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {allowed}")
        return value

    return parse


def _model_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("model name must not be empty")
    return text.strip()


# --- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check that TorchServe and its models can serve. Exit codes: "
        "0 healthy, 1 unhealthy, 2 usage error, 3 server unreachable.",
    )
    parser.add_argument("--inference-url", type=base_url, default=DEFAULT_INFERENCE_URL)
    parser.add_argument("--management-url", type=base_url, default=DEFAULT_MANAGEMENT_URL)
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_model_name,
        default=[],
        metavar="NAME",
        help="check only this model (repeatable; default: every registered)",
    )
    parser.add_argument(
        "--wait",
        type=_seconds(allow_zero=True),
        default=0.0,
        metavar="SECONDS",
        help="poll until healthy or this many seconds have passed",
    )
    parser.add_argument(
        "--customized",
        action="store_true",
        help="also require the handler's describe_handle() status 'ready'",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--probe", choices=PROBES, default="default", help=PROBE_HELP)
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="TorchServe's logs/ directory: show why a model's initialize failed "
        "(default: ./logs when it exists)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="TorchServe's key_file.json, when token authorization is on",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds(allow_zero=False),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="per-request timeout (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse errors included) instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        auth = Auth() if args.key_file is None else _load_keys_or_exit(parser, args.key_file)
    except SystemExit as stop:  # argparse's own usage errors, and --help
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    target = Target(args.inference_url, args.management_url, args.timeout, auth)
    log_dir = args.log_dir or (Path("logs") if Path("logs").is_dir() else None)
    try:
        report = wait_until_healthy(
            lambda: probe(
                target, args.models, customized=args.customized, mode=args.probe, log_dir=log_dir
            ),
            args.wait,
        )
    except KeyboardInterrupt:
        return 130
    _emit(report, as_json=args.json)
    return report.exit_code


def _load_keys_or_exit(parser: argparse.ArgumentParser, path: Path) -> Auth:
    try:
        return load_keys(path)
    except UsageError as err:
        parser.error(str(err))


def _emit(report: HealthReport, as_json: bool) -> None:
    if report.unreachable:
        print(f"{PROG}: error: {report.error}", file=sys.stderr)
    if as_json:
        print(render_json(report))
    elif not report.unreachable:
        print(render_text(report))

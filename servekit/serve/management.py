"""The one client of TorchServe's management API: describe, list, register, scale, set the
default version, unregister, and wait until a model's workers are READY.

Every tool that talks to port 8081 goes through :class:`Management`, so auth, quoting of model
names, timeouts and the errors raised are the same everywhere:

- ``ManagementUnreachable`` (a ``ServerError``): no HTTP answer (refused, timed out, reset);
- ``ManagementError`` (a ``ServerError``): an answer with an unexpected status, naming what
  was being done, the status and TorchServe's message; ``status`` holds the code;
- a body that is not the JSON the API documents is a ``ManagementError`` too, never a crash.

    >>> api = Management("http://127.0.0.1:8081")                    # doctest: +SKIP
    >>> entry = api.wait_ready("iris", timeout=60)                    # doctest: +SKIP
    >>> entry["batchSize"], len(api.ready_workers(entry))             # doctest: +SKIP
    (8, 1)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from servekit.errors import ServerError, Unreachable

READY = "READY"


class ManagementUnreachable(Unreachable):
    """The management API gave no HTTP answer."""


class ManagementError(ServerError):
    """The management API answered, but not as asked (``status`` is its HTTP status, 0 when
    the body was not what the API documents)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def model_path(model: str, version: str | None = None) -> str:
    """``/models/<model>[/<version>]`` with both quoted (a name is never a path)."""
    path = f"/models/{quote(model, safe='')}"
    return f"{path}/{quote(version, safe='')}" if version else path


class Management:
    """A TorchServe management API at ``url`` (``http://host:8081``).

    ``token`` is the management key when token authorization is on; ``context`` is called
    when a call fails and its text is appended to the error (a private server's log tail).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        context: Callable[[], str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = context
        self.session = session or requests.Session()

    # -- the calls ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        doing: str = "",
    ) -> requests.Response:
        """One call; ``ManagementUnreachable`` when no answer came. Any status is returned."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            return self.session.request(
                method,
                f"{self.url}{path}",
                params=dict(params or {}),
                headers=headers,
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as err:
            raise ManagementUnreachable(
                f"{doing or method + ' ' + path}: no answer from {self.url} ({_reason(err)})"
            ) from err

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        ok: Sequence[int] = (200,),
        timeout: float | None = None,
        doing: str = "",
    ) -> object:
        """One call that must answer a status in ``ok``; returns the decoded JSON body."""
        doing = doing or f"{method} {path}"
        reply = self.request(method, path, params, timeout, doing)
        if reply.status_code not in ok:
            raise ManagementError(
                f"{doing}: HTTP {reply.status_code} {_message(reply)}{self._context()}",
                reply.status_code,
            )
        try:
            return reply.json()
        except ValueError:
            if not reply.content:
                return None
            raise ManagementError(
                f"{doing}: the answer is not JSON: {reply.text[:200]!r}"
            ) from None

    def models(self) -> list[str]:
        """The registered model names (every page of ``GET /models``)."""
        names: list[str] = []
        token: str | None = None
        for _ in range(10_000):
            params = {"limit": 1000, **({"next_page_token": token} if token else {})}
            page = self.call("GET", "/models", params, doing="listing models")
            if not isinstance(page, dict) or not isinstance(page.get("models"), list):
                raise ManagementError(f"listing models: unexpected answer {str(page)[:200]!r}")
            names += [
                str(m["modelName"])
                for m in page["models"]
                if isinstance(m, dict) and "modelName" in m
            ]
            token = page.get("nextPageToken")
            if not token:
                return names
        raise ManagementError("listing models: the pages do not end")

    def describe(
        self, model: str, version: str | None = None, customized: bool = False
    ) -> list[dict[str, Any]]:
        """``GET /models/<model>[/<version>]``: one entry per version (``all`` for every one).

        A 404 is a ``ManagementError`` with ``status`` 404 (not registered)."""
        params = {"customized": "true"} if customized else {}
        body = self.call("GET", model_path(model, version), params, doing=f"describing {model}")
        if not isinstance(body, list) or not all(isinstance(e, dict) for e in body) or not body:
            raise ManagementError(f"describing {model}: unexpected answer {str(body)[:200]!r}")
        return body

    def entry(
        self, model: str, version: str | None = None, customized: bool = False
    ) -> dict[str, Any]:
        """The one describe entry of ``model`` (its default version unless ``version``)."""
        return self.describe(model, version, customized)[0]

    def register(
        self,
        archive: str,
        *,
        model_name: str | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        response_timeout: int | None = None,
        synchronous: bool = True,
        timeout: float = 300.0,
    ) -> object:
        """``POST /models``: register ``archive`` (a file name in the model store, or a URL)."""
        params: dict[str, Any] = {"url": archive, "synchronous": str(synchronous).lower()}
        for key, value in (
            ("model_name", model_name),
            ("initial_workers", workers),
            ("batch_size", batch_size),
            ("max_batch_delay", max_batch_delay),
            ("response_timeout", response_timeout),
        ):
            if value is not None:
                params[key] = value
        return self.call(
            "POST",
            "/models",
            params,
            ok=(200, 202),
            timeout=timeout,
            doing=f"registering {archive}",
        )

    def scale(
        self,
        model: str,
        min_workers: int,
        max_workers: int | None = None,
        version: str | None = None,
        synchronous: bool = True,
        timeout: float = 300.0,
    ) -> object:
        """``PUT /models/<model>``: ``min_workers``..``max_workers`` workers."""
        params = {
            "min_worker": min_workers,
            "max_worker": min_workers if max_workers is None else max_workers,
            "synchronous": str(synchronous).lower(),
        }
        return self.call(
            "PUT",
            model_path(model, version),
            params,
            ok=(200, 202),
            timeout=timeout,
            doing=f"scaling {model} to {params['min_worker']}..{params['max_worker']} workers",
        )

    def set_default(self, model: str, version: str) -> object:
        """``PUT /models/<model>/<version>/set-default``."""
        return self.call(
            "PUT",
            model_path(model, version) + "/set-default",
            doing=f"making {model} {version} the default",
        )

    def unregister(
        self,
        model: str,
        version: str | None = None,
        timeout: float = 120.0,
        missing_ok: bool = True,
    ) -> None:
        """``DELETE /models/<model>[/<version>]``, waiting until its workers are gone."""
        ok = (200, 404) if missing_ok else (200,)
        self.call(
            "DELETE",
            model_path(model, version),
            {"synchronous": "true"},
            ok=ok,
            timeout=timeout,
            doing=f"unregistering {model}" + (f" {version}" if version else ""),
        )

    # -- waiting ------------------------------------------------------------------------------

    @staticmethod
    def pending_requests(entry: Mapping[str, Any]) -> int:
        """Requests in the entry's job queue (``jobQueueStatus.pendingRequests``; 0 if absent)."""
        queue = entry.get("jobQueueStatus")
        pending = queue.get("pendingRequests") if isinstance(queue, Mapping) else None
        return pending if isinstance(pending, int) and not isinstance(pending, bool) else 0

    @staticmethod
    def ready_workers(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The entry's workers whose status is READY."""
        workers = entry.get("workers")
        if not isinstance(workers, list):
            return []
        return [w for w in workers if isinstance(w, Mapping) and w.get("status") == READY]

    def wait_ready(
        self,
        model: str,
        workers: int | None = None,
        timeout: float = 120.0,
        version: str | None = None,
        exact: bool = False,
        interval: float = 0.1,
        until: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Until ``model`` has ``workers`` READY workers (default: its ``minWorkers``, at least
        one), exactly that many workers in all when ``exact``, and ``until(entry)`` holds;
        returns the last describe entry. ``ManagementError`` naming what was seen at the
        deadline; an unreachable API or a model not (yet) registered is retried until then."""
        deadline = time.monotonic() + timeout
        seen = "no answer yet"
        while True:
            try:
                entry = self.entry(model, version)
            except ServerError as err:
                seen = str(err)
            else:
                want = workers if workers is not None else max(1, _int(entry.get("minWorkers")))
                ready = len(self.ready_workers(entry))
                total = len(entry["workers"]) if isinstance(entry.get("workers"), list) else 0
                seen = f"{ready} of {total} workers READY, {want} wanted"
                if (
                    ready >= want
                    and (not exact or total == want)
                    and (until is None or until(entry))
                ):
                    return entry
            if time.monotonic() >= deadline:
                raise ManagementError(
                    f"{model} not READY within {timeout:g} s: {seen}{self._context()}"
                )
            time.sleep(interval)

    def _context(self) -> str:
        if self.context is None:
            return ""
        try:
            text = self.context()
        except Exception:
            return ""
        return f"\n{text}" if text else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _message(reply: requests.Response) -> str:
    """TorchServe's error message (its JSON ``message``), else the start of the body."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text.strip()[:300]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return str(body)[:300]


def _reason(err: requests.RequestException) -> str:
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "connection refused or reset"
    return type(err).__name__

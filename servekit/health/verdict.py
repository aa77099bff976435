"""The verdicts: whether a server and its models can serve, judged from TorchServe's own
answers (``/ping`` and the describe documents). Pure: no HTTP here, so every rule is tested on
plain dicts.

A model counts as healthy only when at least ``max(minWorkers, 1)`` of its workers are
``READY``; with ``customized=True`` its handler's ``describe_handle()`` status must also be
``"ready"``; the ``readiness`` probe also fails a model whose job queue is full.

    >>> evaluate_model({"modelName": "iris", "minWorkers": 1,
    ...                 "workers": [{"status": "READY"}]}).reason
    '1/1 workers READY'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from servekit.errors import ServerError

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

READY = "READY"
HANDLER_READY = "ready"
PROBES = ("default", "startup", "readiness", "liveness")


class MalformedResponse(ServerError):
    """TorchServe answered, but not with the JSON shape it documents."""


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
class Worker:
    """One worker of a describe entry: TorchServe's id (kept across restarts of its process),
    the process id (0 while TorchServe has none to report) and its state."""

    id: str
    pid: int
    status: str
    start_time: str = ""
    """When TorchServe made this worker: the same across restarts of its process, new with a
    new server (whose worker ids start over at 9000)."""


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
    max_workers: int = 0
    worker_list: tuple[Worker, ...] = ()
    init_error: str | None = None
    described: bool = False
    """TorchServe's describe was read: the worker and queue figures are its, not zeros."""


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


# --- one model's describe entry ---------------------------------------------------------


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
    workers = _workers(entry.get("workers"))
    states = [w.status for w in workers]
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
        max_workers=_int_field(entry, "maxWorkers"),
        worker_list=workers,
        described=True,
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


def _workers(workers: object) -> tuple[Worker, ...]:
    if workers is None:
        return ()
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise MalformedResponse(f"'workers' should be a list of objects, got {_kind(workers)}")
    return tuple(
        Worker(
            str(w.get("id", "")),
            _pid(w.get("pid")),
            str(w.get("status", "UNKNOWN")),
            str(w.get("startTime", "")),
        )
        for w in workers
    )


def _pid(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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

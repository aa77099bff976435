"""Rendering a ``HealthReport``: ``ping: Healthy`` and one line per model, or one JSON object
(the same fields, for machines). Formatting only; the verdicts are made in ``verdict``.
"""

from __future__ import annotations

import json

from servekit.health.verdict import HealthReport, ModelHealth, PingResult


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

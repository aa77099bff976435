"""Health: probing ``/ping`` and each model's workers (``servekit health``), reading why a model
cannot start from the server log, and recycling workers without dropping below minWorkers.

``verdict`` judges TorchServe's answers (pure), ``probe`` asks for them, ``render`` formats the
report, ``cli`` is the command; ``initlog`` reads the server log, ``recycle`` replaces workers.
The names other packages use are here:

    >>> from servekit.health import Target, probe, wait_until_healthy
"""

from servekit.health.probe import Auth, Target, probe, wait_until_healthy
from servekit.health.verdict import HealthReport, ModelHealth, PingResult

__all__ = [
    "Auth",
    "HealthReport",
    "ModelHealth",
    "PingResult",
    "Target",
    "probe",
    "wait_until_healthy",
]

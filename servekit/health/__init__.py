"""Health: probing ``/ping`` and each model's workers (``servekit health``), reading why a model
cannot start from the server log, and recycling workers without dropping below minWorkers."""

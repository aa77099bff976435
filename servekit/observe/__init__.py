"""Observability: what TorchServe does not export, on a Prometheus endpoint of its own.

``servekit exporter`` polls the management API (the plain describe: never a customized one,
which would wait in the job queue for a worker like a prediction) and the workers' published
status files, and serves per model: workers READY against ``minWorkers``, pending requests,
the handler status, restarts and recycles, and whether the model can load at all.
"""

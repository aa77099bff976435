"""The handler runtime: ``ToolkitHandler`` and what it uses (decoding, errors, options, image
decoding, readiness, worker counters, recycling).

It is copied into every ``.mar`` with the project's ``handlers/`` package, so an archive serves on
a TorchServe whose environment has only the model's own dependencies, and a worker runs exactly
the runtime that was archived (the model directory comes first on a worker's ``PYTHONPATH``).
It must import nothing from servekit outside this package (``tests/unit/test_layout.py``)."""

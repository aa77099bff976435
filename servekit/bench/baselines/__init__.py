"""Baselines for the load benchmarks: the in-process limit and other servers of the same model.

``limit`` measures the model's batched throughput with no server at all; ``starlette_server``
is the seed-001 design (one asyncio queue, dynamic batching); ``litserve_server`` serves the
same handler with LitServe's own batching; ``runner`` starts either as a subprocess.
"""

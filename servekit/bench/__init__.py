"""Benchmarks and tuning: the load generator, payloads, plots, the comparison with the
in-process limit and peer servers, and the batch-settings tuner. Builds on ``servekit.serve``."""

"""Benchmarks and tuning, built on ``servekit.serve``; the ``[bench]`` extra.

- ``loadgen``, ``payloads``: the one HTTP client every benchmark drives servers with, and what
  it sends; ``stats``: the one percentile; ``machine``: the one record of the machine;
  ``plot``: the figures.
- ``run`` (``servekit bench``), ``compare``, ``profile``, ``bridge`` (``bench-bridge``),
  ``ops`` (``bench-ops``): the benchmark commands; ``command``: what they share.
- ``search`` (pure: the batch-setting searches) and ``trials`` (the measure on a private
  TorchServe), driven by ``tune`` (``servekit tune``).
- ``baselines``: the in-process limit (``servekit limit``) and the peer servers.
"""

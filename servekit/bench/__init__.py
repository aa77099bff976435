"""Benchmarks and tuning, built on ``servekit.serve``; the ``[bench]`` extra.

- ``loadgen``, ``payloads``: the one HTTP client every throughput benchmark drives servers
  with (asyncio, keep-alive), and what it sends; ``closed_loop``: the client that tells what
  happened to each request while a server stops, scales down or changes a model (a connection
  per request: refused at connect vs cut off after sending), for ``drain`` and the tests;
  ``stats``: the one percentile; ``machine``: the one record of the machine; ``plot``: the
  figures.
- ``run`` (``servekit bench``), ``compare``, ``profile``, ``bridge`` (``bench-bridge``),
  ``ops`` (``bench-ops``), ``drain`` (``bench-drain``): the benchmark commands; ``command``:
  what they share.
- ``search`` (pure: the batch-setting searches) and ``trials`` (the measure on a private
  TorchServe), driven by ``tune`` (``servekit tune``).
- ``baselines``: the in-process limit (``servekit limit``) and the peer servers.
"""

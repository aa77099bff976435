"""Config checking: the schema of every TorchServe key, the parsers of ``config.properties``,
``model-config.yml`` and model specs, and the validator (``servekit validate``).

Depends on nothing else in servekit but ``servekit.errors``."""

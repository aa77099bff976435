"""The example models' TorchServe handlers.

This package is copied whole into every ``.mar`` by ``servekit archive``, together with the
handler runtime ``servekit.runtime``: a model's handler module imports ``servekit.runtime.base``
from the archive, so what runs in a worker is exactly what was archived.
"""

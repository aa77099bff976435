"""The toolkit's TorchServe handlers.

This package is copied whole into every ``.mar`` by ``make archive``: a model's
handler module imports ``handlers.base`` from the archive, never from an
installed package, so what runs in a worker is exactly what was archived.
"""

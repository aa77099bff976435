"""This project's handlers, one module per model (``servekit new-model`` writes them).

Every archive ships this whole package, so a handler may import a shared helper module
from here (``from handlers.common import ...``).
"""

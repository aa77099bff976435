"""Serving: building archives, inspecting them, running TorchServe, talking to its management
API, and loading a handler in-process (the harness). Builds on ``servekit.config``."""

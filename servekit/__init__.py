"""servekit: the TorchServe handler and config toolkit (tools around the server)."""

__version__ = "0.1.0"

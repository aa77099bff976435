"""Operations on a running server that must not lose a request: stopping it with a drain
(``servekit stop``, ``servekit run``), scaling a model down (``servekit scale``) and switching
a model to a new archive (``servekit rollout``)."""

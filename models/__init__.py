"""The example models: training, the packaged weights, and models saved the ways users bring
them (``python -m models.train``, ``python -m models.first_prediction``)."""

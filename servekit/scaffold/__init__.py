"""Scaffolding: ``servekit init`` (a new project) and ``servekit new-model`` (a model from its
weights). Their file templates are package data in ``templates/``."""

"""Corpus: a handler file with two classes (TorchServe refuses it)."""


class Helper:
    pass


class TwoClassesHandler:
    def handle(self, data: list[object], context: object) -> list[object]:
        return data

"""Corpus: a handler that declares no options_class."""


class PlainHandler:
    def handle(self, data: list[object], context: object) -> list[object]:
        return data

"""``ModelHandler``: the base of the kinds' handlers (``servekit.runtime.tabular``, ``vision``,
``text``, ``tensors``): its model comes from the files its ``WeightsOptions`` name
(``servekit.runtime.weights``), its class names from ``labels.json`` when the archive has one."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from servekit.runtime.base import ItemT, ToolkitHandler
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions
from servekit.runtime.weights import HUGGINGFACE, WeightsOptions, load

LABELS_FILE = "labels.json"


class ModelHandler(ToolkitHandler[ItemT]):
    """A kind's handler: its model comes from the files ``WeightsOptions`` name, its class names
    from ``labels.json`` when the archive has one."""

    options_class: ClassVar[type[HandlerOptions]] = WeightsOptions
    options: WeightsOptions

    def load_model(self) -> Any:
        options = self.options
        if not options.weights_format:
            return None
        path = self.model_dir if options.weights_format == HUGGINGFACE else None
        where = path or self.artifact(options.weights)
        try:
            return load(
                where, options.weights_format, self.device, options.module, options.module_args
            )
        except ModelLoadError as err:
            raise ModelLoadError(f"model '{self.model_name}': {err}") from None

    def load_labels(self) -> list[str] | None:
        path = self.model_dir / LABELS_FILE
        if not path.is_file():
            return None
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelLoadError(
                f"model '{self.model_name}': {LABELS_FILE} is not JSON: {err}"
            ) from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelLoadError(
                f"model '{self.model_name}': {LABELS_FILE} must be a JSON list of class names"
            )
        return labels

    def request_schema(self) -> dict[str, Any]:
        """The input schema with this model's settings filled in (a kind overrides it)."""
        return dict(self.input_schema)

    def describe_handle(self) -> dict[str, Any]:
        described = super().describe_handle()
        described["input_schema"] = self.request_schema()
        described["weights"] = {
            "file": self.options.weights,
            "format": self.options.weights_format,
            **({"module": self.options.module} if self.options.module else {}),
        }
        return described

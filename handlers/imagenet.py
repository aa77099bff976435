"""ImageNet-1k classes (EfficientNet-Lite0): image bytes in, top-k labels and probabilities out.

Preprocessing follows the reference EfficientNet-Lite evaluation: centre crop of
224/256 of the short side, bicubic resize to 224x224, RGB scaled as ``(x - 127) / 128``.
The option ``backend`` runs it on ONNX Runtime (fp32 or static int8), built by servekit archive
behind the classifier gate (top-1 agreement and top-5 overlap with eager on real photos).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from handlers.imagenet_options import CLASSES, ImagenetOptions
from servekit.runtime.backend_names import CLASSIFIER, STATIC
from servekit.runtime.backends import OnnxBackendHandler
from servekit.runtime.decoding import Payload
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.images import FORMATS, open_image
from servekit.runtime.outputs import check_finite, ranked

SIDE = 224
CROP_FRACTION = SIDE / (SIDE + 32)
MEAN, SCALE = 127.0, 128.0
ARCHITECTURE = "efficientnet-lite0"


class ImagenetHandler(OnnxBackendHandler[np.ndarray]):
    """Crops, resizes and classifies one image per request."""

    options_class = ImagenetOptions
    options: ImagenetOptions
    gate = CLASSIFIER
    int8 = STATIC  # dynamic int8 of a convolution (ConvInteger) is slower than fp32 on CPUs
    onnx_inputs = ("pixels",)
    onnx_outputs = ("logits",)
    input_schema = {
        "content_type": f'{", ".join(FORMATS)} image; raw, base64 or {{"b64": ...}}',
        "image": "a photo; the centre square is classified",
    }
    output_schema = {
        "label": "ImageNet-1k class name of the best class",
        "class_id": "its index 0..999",
        "top_k": "list of {label, class_id, probability}, best first",
    }

    def load_eager_model(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet  # the architecture; weights: archive

        return self.load_state_dict(EfficientNet.from_name(ARCHITECTURE), "efficientnet-lite0.pth")

    def load_labels(self) -> list[str]:
        labels = json.loads(self.artifact("imagenet_labels.json").read_text(encoding="utf-8"))
        if not (
            isinstance(labels, list)
            and len(labels) == CLASSES
            and all(isinstance(name, str) for name in labels)
        ):
            raise ModelLoadError(
                f"model '{self.model_name}': 'imagenet_labels.json' must be a list of "
                f"{CLASSES} class names"
            )
        return labels

    def parse_request(self, payload: Payload) -> np.ndarray:
        return _pixels(payload.raw_bytes(self.options.max_image_bytes), self.options.max_pixels)

    def preprocess(self, items: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()

    def postprocess(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = torch.softmax(check_finite(outputs), dim=1)
        return [
            {"label": top[0]["label"], "class_id": top[0]["class_id"], "top_k": top}
            for top in ranked(probabilities, self.labels or [], self.options.top_k)
        ]

    def warmup_items(self, n: int) -> list[np.ndarray]:
        return [np.zeros((SIDE, SIDE, 3), dtype=np.float32)] * n


def _pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """``[224, 224, 3]`` float32, normalized, from encoded image bytes."""
    rgb = open_image(data, max_pixels, "RGB", draft=(SIDE + 32, SIDE + 32))
    side = max(1, round(min(rgb.size) * CROP_FRACTION))
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    box = (left, top, left + side, top + side)
    square = rgb.resize((SIDE, SIDE), Image.Resampling.BICUBIC, box=box)
    return (np.asarray(square, dtype=np.float32) - MEAN) / SCALE

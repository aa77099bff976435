"""Handwritten digit from an image (PNG, JPEG, ...): bytes in, digit and top-k out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from handlers.digits_options import DigitsOptions
from handlers.nets import DIGIT_MAX, DIGIT_SIDE, DigitsNet
from servekit.runtime.base import ToolkitHandler
from servekit.runtime.decoding import Payload
from servekit.runtime.images import FORMATS, open_image
from servekit.runtime.outputs import check_finite


class DigitsHandler(ToolkitHandler[np.ndarray]):
    """Greyscale-izes, resizes to 8x8 and classifies one image per request."""

    options_class = DigitsOptions
    options: DigitsOptions
    input_schema = {
        "content_type": f'{", ".join(FORMATS)} image; raw, base64 or {{"b64": ...}}',
        "image": "one digit, ideally square; light ink on dark or dark ink on light",
    }
    output_schema = {"digit": "int 0..9", "top_k": "list of {digit, probability}, best first"}

    def load_model(self) -> torch.nn.Module:
        return self.load_state_dict(DigitsNet(), "digits.pt")

    def load_labels(self) -> list[str]:
        return [str(d) for d in range(10)]

    def parse_request(self, payload: Payload) -> np.ndarray:
        data = payload.raw_bytes(self.options.max_image_bytes)
        return _digit_pixels(data, self.options)

    def preprocess(self, items: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(items) / DIGIT_MAX).float().unsqueeze(1)

    def postprocess(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = torch.softmax(check_finite(outputs), dim=1)
        top = torch.topk(probabilities, self.options.top_k, dim=1)
        return [
            {
                "digit": int(idx[0]),
                "top_k": [
                    {"digit": int(d), "probability": round(float(p), 6)}
                    for d, p in zip(idx, vals, strict=True)
                ],
            }
            for vals, idx in zip(top.values, top.indices, strict=True)
        ]

    def warmup_items(self, n: int) -> list[np.ndarray]:
        return [np.zeros((DIGIT_SIDE, DIGIT_SIDE), dtype=np.float32)] * n


def _digit_pixels(data: bytes, options: DigitsOptions) -> np.ndarray:
    grey = open_image(data, options.max_pixels, "L")
    small = grey.resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) / 255.0
    if options.invert == "always" or (options.invert == "auto" and _light_background(pixels)):
        pixels = 1.0 - pixels
    return pixels * DIGIT_MAX


def _light_background(pixels: np.ndarray) -> bool:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return float(border.mean()) > 0.5

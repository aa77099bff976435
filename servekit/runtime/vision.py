"""The ``image-classifier`` kind: image bytes in, the top classes with probabilities out.

Preprocessing is the usual torchvision recipe, set by options: resize the short side to
``resize`` and crop the centre ``image_size`` square (or, with ``resize: 0``, resize the whole
image to the square), scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from servekit.runtime.decoding import Payload
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.images import FORMATS, open_image
from servekit.runtime.model_handler import ModelHandler
from servekit.runtime.options import HandlerOptions
from servekit.runtime.outputs import as_rows, class_names, ranked
from servekit.runtime.weights import WeightsOptions

MODES = {"RGB": 3, "L": 1}
MAX_SIDE = 4096
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class ImageOptions(WeightsOptions):
    image_size: int = 224
    """The side of the square the model sees."""
    resize: int = 256
    """The short side is resized to this, then the centre image_size square is cropped;
    0 resizes the whole image to the square instead (no crop)."""
    mode: str = "RGB"
    """'RGB' (3 channels) or 'L' (grey, 1 channel)."""
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    """Per channel, subtracted after scaling pixels to [0, 1]."""
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    """Per channel, divided by after subtracting the mean."""
    resample: str = "bilinear"
    """The resize filter: nearest, box, bilinear, bicubic or lanczos."""
    top_k: int = 5
    """How many classes to list with their probabilities, best first."""
    max_image_bytes: int = 10_000_000
    """Larger inputs get 413."""
    max_pixels: int = 40_000_000
    """Larger images get 413 before they are decoded."""

    def check(self) -> None:
        super().check()
        if not 1 <= self.image_size <= MAX_SIDE:
            raise ModelLoadError(
                f"handler option 'image_size' is {self.image_size}; it must be 1..{MAX_SIDE}"
            )
        if self.resize and not self.image_size <= self.resize <= 2 * MAX_SIDE:
            raise ModelLoadError(
                f"handler option 'resize' is {self.resize}; it must be 0 (no crop) or "
                f"image_size ({self.image_size})..{2 * MAX_SIDE}"
            )
        if self.mode not in MODES:
            raise ModelLoadError(
                f"handler option 'mode' is {self.mode!r}; allowed: {', '.join(MODES)}"
            )
        channels = MODES[self.mode]
        for name in ("mean", "std"):
            if len(getattr(self, name)) != channels:
                raise ModelLoadError(
                    f"handler option '{name}' holds {len(getattr(self, name))} values; "
                    f"mode {self.mode} has {channels} channel(s)"
                )
        if not all(s > 0 for s in self.std):
            raise ModelLoadError(f"handler option 'std' is {list(self.std)}; each must be > 0")
        if self.resample not in RESAMPLING:
            raise ModelLoadError(
                f"handler option 'resample' is {self.resample!r}; allowed: {', '.join(RESAMPLING)}"
            )
        for name in ("top_k", "max_image_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ModelLoadError(
                    f"handler option '{name}' is {getattr(self, name)}; it must be >= 1"
                )


class ImageClassifierHandler(ModelHandler[np.ndarray]):
    """One image per request (raw bytes, base64, or ``{"b64": ...}``); the top classes back."""

    options_class: ClassVar[type[HandlerOptions]] = ImageOptions
    options: ImageOptions
    output_schema = {
        "label": "the best class",
        "class_id": "its index in the model's output",
        "top_k": "list of {label, class_id, probability}, best first",
    }

    def request_schema(self) -> dict[str, Any]:
        o = self.options
        how = f"short side to {o.resize}, centre crop" if o.resize else "resized whole"
        return {
            "content_type": f'{", ".join(FORMATS)} image; raw, base64 or {{"b64": ...}}',
            "image": f"one image; {how} to {o.image_size}x{o.image_size} {o.mode}",
            "limits": f"{o.max_image_bytes} bytes, {o.max_pixels} pixels",
        }

    def parse_request(self, payload: Payload) -> np.ndarray:
        return pixels(payload.raw_bytes(self.options.max_image_bytes), self.options)

    def preprocess(self, items: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(items))

    def postprocess(self, outputs: Any) -> list[dict[str, Any]]:
        rows = as_rows(outputs)
        names = class_names(self.labels, rows.shape[1])
        results = []
        for top in ranked(torch.softmax(rows, dim=1), names, self.options.top_k):
            results.append({"label": top[0]["label"], "class_id": top[0]["class_id"], "top_k": top})
        return results

    def warmup_items(self, n: int) -> list[np.ndarray]:
        o = self.options
        return [np.zeros((MODES[o.mode], o.image_size, o.image_size), dtype=np.float32)] * n


def pixels(data: bytes, options: ImageOptions) -> np.ndarray:
    """``[channels, image_size, image_size]`` float32, normalized, from encoded image bytes."""
    side, resize = options.image_size, options.resize
    image = open_image(data, options.max_pixels, options.mode, draft=(resize or side,) * 2)
    filter_ = RESAMPLING[options.resample]
    if resize:
        scale = resize / min(image.size)
        crop = side / scale  # the centre square, in the source's pixels
        left, top = (image.width - crop) / 2, (image.height - crop) / 2
        square = image.resize((side, side), filter_, box=(left, top, left + crop, top + crop))
    else:
        square = image.resize((side, side), filter_)
    array = np.asarray(square, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(options.mean, dtype=np.float32)
    std = np.asarray(options.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))

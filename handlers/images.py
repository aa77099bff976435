"""Decode untrusted image bytes safely: clear 4xx errors, never a decompression bomb."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from handlers.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def open_image(
    data: bytes, max_pixels: int, mode: str, draft: tuple[int, int] | None = None
) -> Image.Image:
    """``data`` decoded and converted to ``mode`` ("L", "RGB", ...), upright per its EXIF.

    Over ``max_pixels`` is a 413 before the pixels are decoded; bytes PIL cannot read are
    a 415; a truncated or corrupt file is a 400. ``draft`` lets JPEG decode at a reduced
    scale close to that size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {image.width}x{image.height} pixels; the limit is {max_pixels}"
                )
            if draft is not None:
                image.draft(mode, draft)
            return ImageOps.exif_transpose(image).convert(mode)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnsupportedMediaType(
            "body is not an image PIL can read (JPEG, PNG, GIF, BMP, WebP, ...)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise BadRequest(f"image is truncated or corrupt: {err}") from None

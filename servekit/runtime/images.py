"""Decode untrusted image bytes safely: clear 4xx errors, never a decompression bomb."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from servekit.runtime.errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""What PIL may open: common raster formats only (EPS would run Ghostscript, and the
rarer plugins are where malformed files do the most harm)."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_INFLATE_STEP = 1 << 16
MAX_JPEG_SCANS = 100
"""Scans one JPEG may hold: libjpeg decodes every scan over every block, so a few bytes per
scan buy a whole pass over the image (a progressive JPEG has about ten)."""
_SOS = b"\xff\xda"  # start of scan; in entropy-coded data a 0xFF is always stuffed
_TIFF_JPEG = (6, 7)  # Compression tag values: old-style and new-style JPEG


def open_image(
    data: bytes, max_pixels: int, mode: str, draft: tuple[int, int] | None = None
) -> Image.Image:
    """``data`` decoded and converted to ``mode`` ("L", "RGB", ...), upright per its EXIF.

    Over ``max_pixels`` is a 413 before the pixels are decoded; bytes that are none of
    ``FORMATS`` are a 415; a truncated or corrupt file is a 400, whatever PIL raised.
    ``draft`` lets JPEG decode at a reduced scale close to that size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            if image.width * image.height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {image.width}x{image.height} pixels; the limit is {max_pixels}"
                )
            _check_work(image, data, max_pixels)
            if draft is not None:
                image.draft(mode, draft)
            image.load()  # every pixel now, so a truncated file fails here, not lazily
            if image.format == "PNG" and _png_rows_missing(data):
                raise BadRequest(
                    "image is truncated or corrupt: its pixel data ends before the last row"
                )
            return _convert(ImageOps.exif_transpose(image), mode)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"body is not an image PIL can read here ({', '.join(FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise PayloadTooLarge(
            f"image declares sizes too large to decode; the limit is {max_pixels} pixels"
        ) from None
    except Exception as err:  # PIL's plugins raise many types on malformed files
        raise BadRequest(f"image is truncated or corrupt: {_reason(err)}") from None


def _check_work(image: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse, before decoding, what would cost far more than its pixels: a JPEG of
    thousands of scans, a TIFF whose tiles are larger than the image limit (libtiff
    allocates a whole tile), JPEG inside TIFF (scans again, out of reach of the count)."""
    if image.format == "JPEG" and (scans := data.count(_SOS)) > MAX_JPEG_SCANS:
        raise PayloadTooLarge(f"JPEG holds {scans} scans; the limit is {MAX_JPEG_SCANS}")
    if image.format != "TIFF":
        return
    tags = getattr(image, "tag_v2", {})
    if tags.get(259) in _TIFF_JPEG:
        raise UnsupportedMediaType("TIFF with JPEG compression is not accepted; send a JPEG")
    tile = int(tags.get(322, 0) or 0) * int(tags.get(323, 0) or 0)
    samples = int(tags.get(277, 1) or 1)
    bits = tags.get(258, (8,))
    depth = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    if tile * samples * -(-depth // 8) > 8 * max_pixels:
        raise PayloadTooLarge(
            f"TIFF tiles of {tags.get(322)}x{tags.get(323)} pixels ({samples} samples) are "
            f"too large to decode; the limit is {max_pixels} pixels"
        )


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:  # e.g. LAB to L: PIL has no such conversion
        raise UnsupportedMediaType(
            f"image mode {image.mode} cannot be converted to {mode}; send RGB or greyscale"
        ) from None


def _reason(err: Exception) -> str:
    text = str(err)[:120] or "no detail"
    return (
        text
        if isinstance(err, (OSError, SyntaxError, ValueError))
        else f"{type(err).__name__}: {text}"
    )


def _png_rows_missing(data: bytes) -> bool:
    """Whether a PNG's pixel data inflates to fewer bytes than its header declares.

    PIL stops quietly where a complete zlib stream ends early and leaves the other rows
    black; this counts the inflated bytes (in bounded steps) against width, height,
    bit depth, colour type and interlacing.
    """
    width, height, depth, colour, interlace = struct.unpack(">IIBBxxB", data[16:29])
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    expected = 0
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
        if columns and rows:
            expected += rows * (1 + (columns * bits + 7) // 8)
    inflate, seen = zlib.decompressobj(), 0
    for piece in _png_chunks(data, b"IDAT"):
        while piece and seen < expected and not inflate.eof:
            seen += len(inflate.decompress(piece, _INFLATE_STEP))
            piece = inflate.unconsumed_tail
    return seen < expected


def _png_chunks(data: bytes, kind: bytes) -> Iterator[bytes]:
    """The data of every chunk of type ``kind``, in order (a bad length ends the walk)."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == kind:
            yield data[pos + 8 : pos + 8 + length]
        pos += 12 + length

"""``servekit.runtime.images.open_image``: what costs far more to decode than its pixels is refused
before decoding (found by a hostile review: each of these killed or bloated a worker)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from servekit.runtime.errors import PayloadTooLarge, UnsupportedMediaType
from servekit.runtime.images import MAX_JPEG_SCANS, open_image

# 146 bytes: a 1x1 deflate TIFF declaring 16384 x 43680 tiles of 3 samples; libtiff
# allocated and touched about 2 GB for it before failing.
TILE_BOMB = bytes.fromhex(
    "49492a0014000000789c6360a03d0000006400010a000001040001000000010000000101040001000000"
    "010000000201030001000000080000000301030001000000080000000601030001000000020000001501"
    "030001000000030000004201040001000000004000004301040001000000a0aa00004401040001000000"
    "0800000045010400010000000c00000000000000"
)


def jpeg_with_extra_scans(side: int, scans: int) -> bytes:
    """A progressive greyscale JPEG followed by ``scans`` AC scans of one EOB run each:
    about 15 bytes a scan, every block of the image decoded again each time."""
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, "JPEG", progressive=True)
    head = out.getvalue()[:-2]  # without its EOI
    table = b"\xff\xc4\x00\x15\x13" + bytes([0, 2] + [0] * 14) + b"\xe0\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x03\x01\x3f\x00"
    blocks = ((side + 7) // 8) ** 2
    bits = "00" + format(max(blocks, 16384) - 16384, "014b")
    bits += "1" * (-len(bits) % 8)
    run = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(
        b"\xff", b"\xff\x00"
    )
    return head + table + (sos + run) * scans + b"\xff\xd9"


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.timeout(30)
def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match=r"JPEG holds \d+ scans; the limit is 100"):
        open_image(jpeg_with_extra_scans(2000, 20_000), 40_000_000, "L")


def test_a_progressive_jpeg_decodes() -> None:
    plain = encoded(Image.new("RGB", (64, 48), (10, 200, 30)), "JPEG", progressive=True)
    assert open_image(plain, 4_000_000, "RGB").size == (64, 48)
    assert open_image(jpeg_with_extra_scans(64, MAX_JPEG_SCANS - 20), 4_000_000, "L").size == (
        64,
        64,
    )


@pytest.mark.timeout(30)
def test_tiff_tiles_larger_than_the_limit_are_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="TIFF tiles of 16384x43680 pixels"):
        open_image(TILE_BOMB, 4_000_000, "L")


def test_a_tiled_tiff_within_the_limit_decodes() -> None:
    tiled = encoded(Image.new("RGB", (100, 60), (1, 2, 3)), "TIFF", tile=(64, 64))
    assert open_image(tiled, 4_000_000, "RGB").getpixel((99, 59)) == (1, 2, 3)


def test_jpeg_inside_tiff_is_refused() -> None:
    data = encoded(Image.new("RGB", (16, 16)), "TIFF", compression="jpeg")
    with pytest.raises(UnsupportedMediaType, match="TIFF with JPEG compression"):
        open_image(data, 4_000_000, "RGB")


def test_a_mode_pil_cannot_convert_is_415() -> None:
    data = encoded(Image.new("LAB", (8, 8)), "TIFF")
    with pytest.raises(UnsupportedMediaType, match="image mode LAB cannot be converted to L"):
        open_image(data, 4_000_000, "L")

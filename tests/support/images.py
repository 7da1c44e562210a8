"""The one JPEG maker and the crafted images that probe the input policy and the decoders.

Everything is made in memory with Pillow (or by hand where Pillow refuses to write the lie, as for a PNG
header that announces more pixels than it holds)."""

from __future__ import annotations

import io
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jpeg_bytes(size: tuple[int, int] = (32, 24), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB", *,
               box: tuple[int, int, int, int] | None = None, noise: bool = False) -> bytes:
    """A JPEG of one colour; `mode="CMYK"` (with a 4-tuple colour, or the default padded) makes an Adobe CMYK JPEG.

    `box` (left, top, right, bottom) paints only that rectangle, on white: a catalogue photo of one product.
    `noise` makes random pixels instead: mostly pixel data, so the file grows with the area and a cut loses pixels.
    """
    from PIL import Image

    if mode == "CMYK" and len(color) == 3:
        color = (*color, 0)
    if noise:
        return _save(Image.effect_noise(size, 60).convert(mode), "JPEG")
    image = Image.new(mode, size, "white" if box else color)
    if box:
        image.paste(color, box)
    return _save(image, "JPEG")


def png_bytes(size: tuple[int, int] = (16, 12), mode: str = "RGB") -> bytes:
    """A PNG in `mode`: "I;16" is 16 bits per pixel grayscale, "RGBA" has alpha, "P" a palette, "1" bilevel."""
    from PIL import Image

    color = {"RGB": (10, 120, 200), "RGBA": (10, 120, 200, 128), "I;16": 40_000, "L": 90, "P": 3, "1": 1}[mode]
    return _save(Image.new(mode, size, color), "PNG")


def webp_bytes(size: tuple[int, int] = (16, 12)) -> bytes:
    from PIL import Image

    return _save(Image.new("RGB", size, (30, 200, 30)), "WEBP")


def animated_bytes(image_format: str, frames: int = 3, size: tuple[int, int] = (16, 12)) -> bytes:
    """An animation of `frames` differently coloured frames: "GIF", "PNG" (APNG) or "WEBP"."""
    from PIL import Image

    images = [Image.new("RGB", size, (40 * i % 256, 90, 200 - 30 * i % 200)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=image_format, save_all=True, append_images=images[1:], duration=50, loop=0)
    return buffer.getvalue()


def gif_bytes(size: tuple[int, int] = (16, 12)) -> bytes:
    """A still GIF: a real image in a format the service does not accept."""
    from PIL import Image

    return _save(Image.new("RGB", size, (1, 2, 3)), "GIF")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is 64 zero bytes: what a decompression bomb
    looks like before decoding (huge sizes), or a truncated image only decoding finds out (small ones)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")


def zero_size_png(width: int = 0, height: int = 0) -> bytes:
    """A PNG header declaring no pixels along one axis (Pillow will not write one)."""
    return png_header(width, height)


def bomb_png(width: int, height: int) -> bytes:
    """A complete, valid bilevel PNG of width x height: a few KB that decode to width*height pixels."""
    row = b"\0" + b"\0" * ((width + 7) // 8)  # filter byte + one bit per pixel, all black
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(row * height, 9)) \
        + _png_chunk(b"IEND", b"")


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 frame header is rewritten to announce width x height (max 65535 each)."""
    data = bytearray(jpeg_bytes((8, 8)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def truncated(data: bytes, keep: int) -> bytes:
    """The first `keep` bytes of an image (an upload cut short)."""
    return data[:keep]


def corrupted(data: bytes, offset: int, garbage: bytes = b"\x00\xff" * 8) -> bytes:
    """`data` with `garbage` written over it at `offset` (headers intact when the offset is past them)."""
    offset = min(offset, max(0, len(data) - len(garbage)))
    return data[:offset] + garbage + data[offset + len(garbage):]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _save(image: object, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)  # type: ignore[attr-defined]
    return buffer.getvalue()

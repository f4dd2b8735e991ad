"""Builders for awkward image inputs, shared by the image tests (no tests here)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(seed: int, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A small picture with structure (two colour blocks and a gradient)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    arr[..., 2] = rng.integers(0, 255)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    arr[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
    return Image.fromarray(arr)


def jpeg(seed: int = 0, size=(80, 64)) -> bytes:
    return encode(scene(seed, size), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    data = jpeg(1, (96, 96))
    return data[: len(data) // 2]


def png_header_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with a tiny (invalid) body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def cmyk_jpeg(colour=(0, 255, 255, 0), size=(64, 64)) -> bytes:
    """Pure CMYK (cyan 0, magenta and yellow full = red)."""
    return encode(Image.new("CMYK", size, colour), "JPEG", quality=95)


def rgba_png(size=(64, 64)) -> bytes:
    """Left half opaque blue, right half fully transparent (must become white)."""
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, size[0] // 2, size[1]))
    return encode(im, "PNG")


def png16(size=(64, 64)) -> bytes:
    """16-bit grayscale: top half 65535 (white), bottom half 16384 (dark grey)."""
    arr = np.full((size[1], size[0]), 16384, np.uint16)
    arr[: size[1] // 2] = 65535
    return encode(Image.fromarray(arr, "I;16"), "PNG")


def animated_gif(size=(64, 64)) -> bytes:
    frames = [Image.new("RGB", size, c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def rotated_jpeg() -> bytes:
    """Stored 64x32 (left half red, right half blue) with EXIF orientation 6 (display rotated 90 CW)."""
    im = Image.new("RGB", (64, 32), (255, 0, 0))
    im.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=95, exif=exif)


def palette_png(size=(64, 64)) -> bytes:
    im = Image.new("RGB", size, (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return encode(im, "PNG")

"""PNG grids: reconstruction grids during training and captioned contact sheets of token shards."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jamdata.io import atomic_write


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] = (), pad: int = 4) -> Image.Image:
    """rows of uint8 HWC tiles (all the same size) -> one image; `labels` name each row."""
    th, tw = rows[0][0].shape[:2]
    label_w = 90 if labels else 0
    ncol = max(len(r) for r in rows)
    out = Image.new("RGB", (label_w + ncol * (tw + pad) + pad, len(rows) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    for i, row in enumerate(rows):
        y = pad + i * (th + pad)
        if labels:
            draw.text((4, y + th // 2 - 6), labels[i], fill="black", font=_font())
        for j, tile in enumerate(row):
            out.paste(Image.fromarray(tile), (label_w + pad + j * (tw + pad), y))
    return out


def contact_sheet(
    items: Sequence[tuple[np.ndarray, str]],
    columns: int = 4,
    tile: int = 192,
    caption_lines: int = 4,
    pairs: Sequence[np.ndarray | None] | None = None,
) -> Image.Image:
    """(uint8 HWC image, caption) items -> tiles with wrapped captions below. With `pairs`, each
    tile shows the original (left) beside the image decoded from its codes (right)."""
    font = _font(12)
    n = len(items)
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    wide = 2 if pairs is not None else 1
    cell_w, text_h = tile * wide + 8 * wide, 16 * caption_lines + 6
    sheet = Image.new("RGB", (cols * cell_w + 8, rows * (tile + text_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    chars = max(12, (tile * wide) // 7)
    for k, (img, caption) in enumerate(items):
        x = 8 + (k % cols) * cell_w
        y = 8 + (k // cols) * (tile + text_h + 8)
        right = x
        if pairs is not None:  # original on the left, decoded on the right
            right = x + tile + 4
            original = pairs[k]
            if original is not None:
                sheet.paste(Image.fromarray(original).resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        sheet.paste(Image.fromarray(img).resize((tile, tile), Image.Resampling.BILINEAR), (right, y))
        lines = textwrap.wrap(caption or "(no caption)", chars)[:caption_lines]
        for li, line in enumerate(lines):
            draw.text((x, y + tile + 3 + 16 * li), line, fill="black", font=font)
    return sheet


def save_png(image: Image.Image, path: str) -> str:
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG", optimize=False)
    return path

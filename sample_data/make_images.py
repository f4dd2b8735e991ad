"""Write sample_data/images/shapes-00000.tar: an img2dataset-style shard of synthetic scenes.

64 pictures of simple coloured shapes on plain or two-tone backgrounds (128x128 to 160x128, JPEG
and PNG) with captions that describe them, plus two samples the pipeline must reject (an image
too small, an empty caption). Deterministic: the same bytes on every run.

    python sample_data/make_images.py
"""
from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jamdata.formats.wds import TarShardWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "images" / "shapes-00000.tar"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "orange": (245, 140, 30), "purple": (140, 60, 180), "white": (245, 245, 245), "black": (20, 20, 20)}
BACKGROUNDS = {"sky blue": (150, 200, 240), "grey": (128, 128, 128), "pale yellow": (250, 240, 190),
               "dark green": (30, 90, 50), "pink": (240, 180, 200)}
SHAPES = ("circle", "square", "triangle", "stripe")


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        d.rectangle((x0, (y0 + y1) // 2 - 6, x1, (y0 + y1) // 2 + 6), fill=colour)


def scene(rng: random.Random, width: int, height: int) -> tuple[Image.Image, str]:
    bg_name = rng.choice(sorted(BACKGROUNDS))
    im = Image.new("RGB", (width, height), BACKGROUNDS[bg_name])
    d = ImageDraw.Draw(im)
    horizon = rng.random() < 0.4
    if horizon:
        d.rectangle((0, height * 2 // 3, width, height), fill=(70, 140, 60))
    parts = []
    for _ in range(rng.randint(1, 3)):
        shape = rng.choice(SHAPES)
        colour = rng.choice([c for c in sorted(COLOURS) if COLOURS[c] != BACKGROUNDS[bg_name]])
        size = rng.randint(min(width, height) // 5, min(width, height) // 2)
        x0, y0 = rng.randint(0, width - size), rng.randint(0, height - size)
        _draw_shape(d, shape, (x0, y0, x0 + size, y0 + size), COLOURS[colour])
        parts.append(f"a {'large' if size > min(width, height) // 3 else 'small'} {colour} {shape}")
    caption = (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
    caption = caption[0].upper() + caption[1:] + f" on a {bg_name} background" + (" above green grass" if horizon else "")
    return im, caption + "."


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


def main() -> None:
    rng = random.Random(20240611)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with TarShardWriter(str(OUT)) as w:
        for i in range(66):
            key = f"{i:09d}"
            width, height = rng.choice([(128, 128), (160, 128), (128, 144)])
            im, caption = scene(rng, width, height)
            fmt, ext = ("PNG", "png") if i % 8 == 7 else ("JPEG", "jpg")
            if i == 64:  # too small: rejected with reason too_small
                im, fmt, ext = im.resize((16, 16)), "PNG", "png"
            if i == 65:  # no caption: rejected with reason empty_caption
                caption = ""
            meta = {"key": key, "caption": caption, "url": f"synthetic://shapes/{key}.{ext}", "status": "success",
                    "width": im.width, "height": im.height}
            w.write(key, {ext: encode(im, fmt), "txt": caption, "json": json.dumps(meta, sort_keys=True).encode()})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

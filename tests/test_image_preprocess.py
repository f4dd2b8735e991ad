import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jamdata.image.preprocess import ImageRejected, preprocess_image, to_uint8_image
from tests import test_image_inputs as ii


def rgb(data: bytes, res: int = 32, **kw) -> tuple[np.ndarray, dict]:
    arr, info = preprocess_image(data, res, min_size=kw.pop("min_size", 16), **kw)
    assert arr.shape == (3, res, res) and arr.dtype == np.float32
    assert arr.min() >= -1.0 and arr.max() <= 1.0
    return to_uint8_image(arr).astype(int), info


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: b"", "empty_file"),
        (ii.truncated_jpeg, "undecodable"),
        (lambda: b"this is a caption file, not a picture\n" * 3, "undecodable"),
        (lambda: ii.encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        (lambda: ii.encode(Image.new("RGB", (400, 40)), "PNG"), "extreme_aspect"),
        (ii.png_header_bomb, "too_large"),
    ],
)
def test_rejects_with_reason(make, reason):
    with pytest.raises(ImageRejected) as e:
        preprocess_image(make(), 32, min_size=16, max_aspect=3.0)
    assert e.value.reason == reason and e.value.detail


def test_decompression_bomb_is_refused_before_decoding():
    """20000x20000 RGB would need 1.2 GB: run under a 700 MB address-space limit."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20));"
        "from tests.test_image_inputs import png_header_bomb;"
        "from jamdata.image.preprocess import preprocess_image, ImageRejected\n"
        "try:\n preprocess_image(png_header_bomb(), 256, max_pixels=10**12)\n"
        "except ImageRejected as e:\n print(e.reason)\n"
        "try:\n preprocess_image(png_header_bomb(), 256)\n"
        "except ImageRejected as e:\n print(e.reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    # with our limit lifted, Pillow's own bomb check (or the truncated body) still stops it
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[-1] == "too_large" and lines[0] in ("too_large", "undecodable")


def test_cmyk_becomes_rgb_red():
    img, info = rgb(ii.cmyk_jpeg())
    assert info["mode"] == "CMYK"
    r, g, b = img[16, 16]
    assert r > 200 and g < 60 and b < 60


def test_alpha_is_blended_onto_white():
    img, _ = rgb(ii.rgba_png())
    left, right = img[16, 2], img[16, 29]
    assert left[2] > 200 and left[0] < 40  # opaque blue stays blue
    assert (right > 245).all()  # transparent becomes white


def test_sixteen_bit_png_scaled_not_clipped():
    img, info = rgb(ii.png16())
    assert info["mode"].startswith("I")
    top, bottom = img[2, 16], img[29, 16]
    assert (top > 250).all() and (abs(bottom - 64) <= 3).all()
    assert top[0] == top[1] == top[2]


def test_animated_gif_first_frame():
    img, info = rgb(ii.animated_gif())
    assert info["frames"] == 2
    r, g, b = img[16, 16]
    assert r > 200 and b < 50


def test_exif_orientation_applied():
    img, info = rgb(ii.rotated_jpeg())
    assert (info["width"], info["height"]) == (32, 64)  # as displayed
    assert img[1, 16][0] > 200 and img[1, 16][2] < 60  # top: red (was the left half)
    assert img[30, 16][2] > 200 and img[30, 16][0] < 60  # bottom: blue


def test_palette_and_grayscale_to_rgb():
    img, _ = rgb(ii.palette_png())
    assert abs(img[5, 5][1] - 200) <= 3 and img[5, 5][0] < 10
    grey, info = rgb(ii.encode(Image.new("L", (40, 40), 100), "PNG"))
    assert info["mode"] == "L" and (abs(grey[10, 10] - 100) <= 1).all()


def test_short_side_resize_and_centre_crop():
    im = Image.new("RGB", (96, 48), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 24, 48))  # left quarter blue: cropped away by the centre crop
    img, info = rgb(ii.encode(im, "PNG"), res=32)
    assert (info["width"], info["height"]) == (96, 48)
    assert img[:, 0, 0].min() > 200 and img[:, 0, 2].max() < 40  # left column is red


def test_jpeg_draft_keeps_the_picture():
    data = ii.jpeg(3, (640, 512))
    a, _ = rgb(data, res=64, jpeg_draft=True)
    b, _ = rgb(data, res=64, jpeg_draft=False)
    assert np.abs(a - b).mean() < 4

"""Image bytes -> float32 CHW array in [-1, 1], the way the VQ-VAE expects it, or a reject reason.

Order: size checks on the header alone (so a decompression bomb is refused before any pixel is
decoded: `Image.open` reads only the header; our `max_pixels` and Pillow's own bomb limits, its
warning included, all become a `too_large` reject), first frame of animations (GIF, APNG, WebP), JPEG draft decoding near the target size, EXIF orientation,
any mode (palette, CMYK, grayscale, 16-bit, alpha) to RGB with transparency blended onto white,
short side resized with LANCZOS, centre crop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # refuse larger headers before decoding


class ImageRejected(ValueError):
    """The image cannot be used; `reason` is a short machine-readable code, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PreprocessConfig:
    resolution: int = 256
    min_size: int = 64
    max_aspect: float = 3.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = True


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if im.mode == "F":
            arr8 = np.clip(arr, 0, 255)
        else:
            hi = 65535.0 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
            arr8 = np.clip(arr.astype(np.float64) * (255.0 / hi), 0, 255)
        return Image.fromarray(np.round(arr8).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def resize_center_crop(im: Image.Image, resolution: int) -> Image.Image:
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def preprocess_image(
    data: bytes,
    resolution: int = 256,
    min_size: int = 64,
    max_aspect: float = 3.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft: bool = True,
) -> tuple[np.ndarray, dict]:
    """-> (float32 [3, resolution, resolution] in [-1, 1], info). Raises ImageRejected."""
    if not data:
        raise ImageRejected("empty_file", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Pillow warns (and decodes anyway) between MAX_IMAGE_PIXELS and twice that: refuse
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("undecodable", f"not a recognised image format (starts with {data[:8]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", f"{e}; not decoded") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageRejected("undecodable", f"header unreadable: {e}") from None
    except Exception as e:  # a format plugin's own failure on hostile bytes (struct.error, ...)
        raise ImageRejected("undecodable", f"header unreadable: {type(e).__name__}: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageRejected("undecodable", f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise ImageRejected(
            "too_large",
            f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (possible decompression bomb); not decoded",
        )
    if min(w, h) < min_size:
        raise ImageRejected("too_small", f"{w}x{h}: short side below {min_size}")
    if max(w, h) / min(w, h) > max_aspect:
        raise ImageRejected("extreme_aspect", f"{w}x{h}: aspect ratio {max(w, h) / min(w, h):.2f} above {max_aspect}")
    info: dict[str, Any] = {"width": w, "height": h, "format": im.format, "mode": im.mode, "frames": 1}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            info["frames"] = int(getattr(im, "n_frames", 1) or 1)  # a GIF counts by walking its frames
            if info["frames"] > 1:
                im.seek(0)
            if jpeg_draft and im.format == "JPEG":
                im.draft("RGB" if im.mode in ("RGB", "YCbCr") else None, (resolution, resolution))
            im.load()
            oriented = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_large", str(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageRejected("undecodable", f"pixel data unreadable: {e}") from None
    except Exception as e:  # as above
        raise ImageRejected("undecodable", f"pixel data unreadable: {type(e).__name__}: {e}") from None
    if oriented is not None and oriented.size != im.size:  # rotated by 90 degrees
        info["width"], info["height"] = info["height"], info["width"]
    rgb = resize_center_crop(_to_rgb(oriented if oriented is not None else im), resolution)
    arr = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return np.ascontiguousarray(arr), info


def to_uint8_image(chw: np.ndarray) -> np.ndarray:
    """[-1, 1] CHW float -> uint8 HWC (for PNGs and contact sheets)."""
    arr = np.asarray(chw, dtype=np.float32)
    return np.clip(np.round((arr.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)

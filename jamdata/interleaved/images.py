"""Loading a document's images and turning them into VQ code grids.

`ImageEncoder` is the small interface the builder needs (`encode(list of [3,R,R] arrays) -> list of
[h,w] code grids`); `VQEncoder` implements it with the project's VQ-VAE. Image failures are
reasons, not exceptions, so the caller decides whether a document survives without the image.
"""
from __future__ import annotations

import tarfile
from typing import Protocol, Sequence

import fsspec
import numpy as np

from jamdata.interleaved.document import ImageRef


class ImageEncoder(Protocol):
    n_codes: int

    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class VQEncoder:
    """The VQ-VAE of a model directory (`jamdata.image.vqvae.load_vqvae`), on CPU, in batches."""

    def __init__(self, vqvae_dir: str, batch_size: int = 16):
        import torch

        from jamdata.image.vqvae import load_vqvae

        torch.set_num_threads(1)
        self.model = load_vqvae(vqvae_dir)
        self.n_codes = self.model.n_embed
        self.resolution = self.model.resolution
        self.batch_size = batch_size

    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack(images[i:i + self.batch_size]).astype(np.float32))
            out += list(self.model.encode(x).cpu().numpy().astype(np.int64))
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        return self.model.decode(torch.from_numpy(np.asarray(codes, np.int64))[None])[0].numpy()


def read_image_bytes(ref: ImageRef) -> bytes:
    """Raises FileNotFoundError / OSError with the path in the message."""
    if ref.data is not None:
        return ref.data
    if ref.path is None:
        raise FileNotFoundError(f"image {ref.ref!r} has no location")
    if ref.path.startswith(("http://", "https://", "ftp://")):
        raise FileNotFoundError(f"web URL {ref.path} is not fetched; download it into a file or an image store")
    if ref.path.startswith("tar://"):
        member, _, tar_path = ref.path[len("tar://"):].partition("::")
        with fsspec.open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise FileNotFoundError(f"{member} not in {tar_path}")
            return f.read()
    try:
        with fsspec.open(ref.path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {ref.path} does not exist") from None


def load_pixels(ref: ImageRef, resolution: int, min_size: int = 16) -> np.ndarray | str:
    """[3, R, R] float32 in [-1, 1], or the reason it could not be used."""
    from jamdata.image.preprocess import ImageRejected, preprocess_image

    try:
        data = read_image_bytes(ref)
    except (OSError, ValueError) as e:
        return f"image {ref.ref!r} missing: {e}"
    try:
        pixels, _ = preprocess_image(data, resolution, min_size=min_size)
    except ImageRejected as e:
        return f"image {ref.ref!r} unusable ({e.reason}): {e.detail}"
    return pixels

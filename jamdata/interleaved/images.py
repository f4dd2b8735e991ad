"""Loading a document's images and turning them into VQ code grids.

`ImageEncoder` is the small interface the builder needs (`encode(list of [3,R,R] arrays) -> list of
[h,w] code grids`); `VQEncoder` implements it with the project's VQ-VAE. Image failures are
reasons, not exceptions, so the caller decides whether a document survives without the image.
"""

from __future__ import annotations

import tarfile
from typing import Protocol, Sequence

import numpy as np

from jamdata.interleaved.document import ImageRef
from jamdata.io import InputPolicy, InputRefused, confined_path, open_url, parent_dir, read_confined


class ImageEncoder(Protocol):
    n_codes: int

    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class VQEncoder:
    """The VQ-VAE of a model directory (`jamdata.image.vqvae.load_vqvae`), on CPU, in batches.
    `verify` ("sha256" | "size"): how a model in a dataset directory is checked against its manifest."""

    def __init__(self, vqvae_dir: str, batch_size: int = 16, verify: str = "sha256"):
        import torch

        from jamdata.image.vqvae import load_vqvae

        torch.set_num_threads(1)
        self.model = load_vqvae(vqvae_dir, verify=verify)
        self.n_codes = self.model.n_embed
        self.resolution = self.model.resolution
        self.batch_size = batch_size

    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack(images[i : i + self.batch_size]).astype(np.float32))
            out += list(self.model.encode(x).cpu().numpy().astype(np.int64))
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        return self.model.decode(torch.from_numpy(np.asarray(codes, np.int64))[None])[0].numpy()


def _tar_member(ref: ImageRef, path: str, policy: InputPolicy | None) -> bytes:
    """A member of a tar file (an image store's entry). A `tar://` name written in a record is
    data like any path: its tar file must lie under the policy's roots."""
    member, _, tar_path = path[len("tar://") :].partition("::")
    if policy is not None:
        tar_path = confined_path(tar_path, parent_dir(tar_path), policy)
    max_bytes = (policy or InputPolicy()).max_bytes
    with open_url(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        info = tar.getmember(member) if member in tar.getnames() else None
        f = tar.extractfile(info) if info is not None and info.isfile() else None
        if info is None or f is None:
            raise FileNotFoundError(f"{member} not in {tar_path}")
        if info.size > max_bytes:
            raise InputRefused(ref.ref, "file_too_large", f"{info.size} bytes, more than the limit of {max_bytes}")
        return f.read()


def read_image_bytes(ref: ImageRef, policy: InputPolicy | None = None) -> bytes:
    """The image's bytes, read under `policy` (InputRefused when the path is not allowed: outside
    the roots, a symlink leaving them, a FIFO or device, too large). Without a policy only the
    file's own directory is a root: the file type and size are still checked. Raises
    FileNotFoundError / OSError with the path in the message."""
    if ref.data is not None:
        limit = (policy or InputPolicy()).max_bytes
        if len(ref.data) > limit:
            raise InputRefused(
                ref.ref, "file_too_large", f"inline image of {len(ref.data)} bytes, more than the limit of {limit}"
            )
        return ref.data
    if ref.path is None:
        raise FileNotFoundError(f"image {ref.ref!r} has no location")
    if ref.path.startswith(("http://", "https://", "ftp://")):
        raise FileNotFoundError(f"web URL {ref.path} is not fetched; download it into a file or an image store")
    if ref.path.startswith("tar://"):
        return _tar_member(ref, ref.path, policy)
    policy = policy or InputPolicy().with_root(parent_dir(ref.path))
    try:
        return read_confined(ref.path, parent_dir(ref.path), policy)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {ref.path} does not exist") from None


def load_pixels(
    ref: ImageRef, resolution: int, min_size: int = 16, policy: InputPolicy | None = None
) -> np.ndarray | str:
    """[3, R, R] float32 in [-1, 1], or the reason it could not be used."""
    from jamdata.image.preprocess import ImageRejected, preprocess_image

    try:
        data = read_image_bytes(ref, policy)
    except InputRefused as e:
        return f"image {ref.ref!r} refused ({e.reason}): {e.why}"
    except (OSError, ValueError) as e:
        return f"image {ref.ref!r} missing: {e}"
    try:
        pixels, _ = preprocess_image(data, resolution, min_size=min_size)
    except ImageRejected as e:
        return f"image {ref.ref!r} unusable ({e.reason}): {e.detail}"
    return pixels

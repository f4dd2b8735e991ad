"""VQ-VAE encoding as a Beam `ModelHandler`: preprocessed images in, codes out.

`RunInference(KeyedModelHandler(VQEncodeHandler(...)))` batches the images (exactly
`batch_size` per batch, fewer only at the end of a bundle), loads the model once per worker
process through `load_vqvae` (manifest-checked, weights-only) and shares it between the
process's threads, and calls `run_inference` on each batch.

Determinism: a convolution's arithmetic can depend on the batch shape it runs at, so every
batch is padded to `batch_size` with zero images before the forward pass. An image's codes then
never depend on which others share its batch, how bundles were cut, or how many workers ran.

Precision: on CUDA the encoder may run under fp16/bf16 autocast; the nearest-code search always
runs in fp32. Images flagged by the caller are encoded again in fp32 and the differing codes
counted, so the job can report (and bound) what reduced precision changed. On CPU the encoder
always runs in fp32 (autocast there is slower, not faster), so `auto` on a machine without a GPU
gives exactly what `cpu` gives.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from jamdata.config import ConfigError

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
AUTOCAST_ON = ("cuda",)  # on CPUs reduced precision is slower, and `auto` must equal `cpu` there

# One element of a batch: (preprocessed float32 CHW image in [-1, 1], encode it again in fp32?)
Example = tuple[np.ndarray, bool]
# What comes back per image: (codes [h, w], None or (codes checked, codes that differ from fp32))
Encoded = tuple[np.ndarray, "tuple[int, int] | None"]


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda` or `auto` (cuda when this process sees a CUDA device) -> a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "images.device",
            "cuda, but this worker has no CUDA device (torch "
            f"{torch.__version__} sees none); use cpu or auto, or run on GPU workers",
        )
    if device not in ("cpu", "cuda"):
        raise ConfigError("images.device", f"got {device!r}", ["cpu", "cuda", "auto"])
    return torch.device(device)


def _codes(model, z: torch.Tensor) -> torch.Tensor:
    n, c, h, w = z.shape
    return model.quantize.indices(z.permute(0, 2, 3, 1).reshape(-1, c)).view(n, h, w)


def encode_fixed(
    model,
    images: Sequence[np.ndarray],
    batch_size: int,
    precision: str = "fp32",
    channels_last: bool = False,
    check: Sequence[bool] | None = None,
    autocast_on: tuple[str, ...] = AUTOCAST_ON,
) -> list[Encoded]:
    """Codes of up to `batch_size` images, computed at the fixed shape [batch_size, 3, H, W].

    `check[i]`: under fp16/bf16 autocast, also encode image i in fp32 and count differing codes.
    Autocast applies on the device types in `autocast_on` only (CUDA)."""
    n = len(images)
    if not 0 < n <= batch_size:
        raise ValueError(f"{n} images for a batch of {batch_size}")
    device = next(model.parameters()).device
    x = np.zeros((batch_size, *images[0].shape), dtype=np.float32)
    x[:n] = np.stack(images)
    t = torch.from_numpy(x).to(device)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    dtype = AUTOCAST_DTYPES.get(precision) if device.type in autocast_on else None
    with torch.inference_mode():
        if dtype is None:
            codes = model.encode(t)[:n]
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                z = model.latent(t)
            codes = _codes(model, z.float())[:n]
        rows = [i for i in range(n) if check is not None and check[i]] if dtype is not None else []
        ref = model.encode(t[rows]) if rows else None
    out_dtype = np.uint16 if model.n_embed <= 65536 else np.int32
    result = list(codes.cpu().numpy().astype(out_dtype))  # one device-to-host copy per batch
    checks: list[Any] = [None] * n
    if ref is not None:
        differ = (ref != codes[rows]).flatten(1).sum(1).tolist()
        per_image = int(codes[0].numel())
        for j, i in enumerate(rows):
            checks[i] = (per_image, int(differ[j]))
    return list(zip(result, checks))


class VQEncodeHandler(ModelHandler[Example, PredictionResult, Any]):
    """Beam model handler for our VQ-VAE (wrap in `KeyedModelHandler` to carry a key per image)."""

    def __init__(
        self,
        vqvae_dir: str,
        *,
        batch_size: int,
        device: str = "cpu",
        precision: str = "fp32",
        verify: str = "sha256",
        torch_threads: int = 1,
        channels_last: bool = False,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.vqvae_dir, self.batch_size, self.device, self.precision = vqvae_dir, batch_size, device, precision
        self.verify, self.torch_threads, self.channels_last = verify, torch_threads, channels_last

    def load_model(self):
        from jamdata.image.vqvae import load_vqvae

        device = resolve_device(self.device)
        torch.set_num_threads(self.torch_threads)
        model = load_vqvae(self.vqvae_dir, device=str(device), verify=self.verify)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def run_inference(
        self, batch: Sequence[Example], model, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        out: list[PredictionResult] = []
        for i in range(0, len(batch), self.batch_size):  # Beam never sends more; a direct caller may
            part = batch[i : i + self.batch_size]
            encoded = encode_fixed(
                model, [e[0] for e in part], self.batch_size, self.precision, self.channels_last, [e[1] for e in part]
            )
            out.extend(PredictionResult(e, r) for e, r in zip(part, encoded))
        return out

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum(int(e[0].nbytes) for e in batch)

    def get_metrics_namespace(self) -> str:
        return "jam_images"

"""The taming-transformers VQGAN losses, as options of VQ-VAE training.

- `LPIPS`: the perceptual distance of Zhang et al. (2018) on VGG16 features, in the layouts the
  weights are published in: torchvision's VGG16 state dict (`vgg16-397923af.pth`, keys
  `features.N.weight`) and the LPIPS linear layers (`vgg.pth` of the lpips / taming packages, keys
  `linK.model.1.weight`). Nothing is downloaded: the user names both files.
- `NLayerDiscriminator`: the PatchGAN discriminator of pix2pix / taming (BatchNorm variant).
- `hinge_d_loss`, `adaptive_weight` (the ratio of gradient norms of the reconstruction and GAN
  losses at the decoder's last layer) and `disc_factor` (zero before `disc_start`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from jamdata.io import InputError
from jamdata.safe_load import RefusedCheckpoint, load_weights_only

# torchvision VGG16 `features`: convolutions (out channels) and "M" max-pools, module for module.
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the ends of these `features` slices.
LPIPS_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
LPIPS_CHANNELS = [64, 128, 256, 512, 512]


class WeightsError(InputError):
    """A weights file the user named is missing, unsafe or does not fit; names the file."""


def read_weights(path: str | Path, what: str, key: str) -> dict:
    """A state dict read weights-only; one-line errors naming the config key and file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            str(path),
            f"{what} weights not found (config key {key}); it cannot be downloaded "
            "here, place the file there (see docs/images.md)",
        )
    try:
        blob = load_weights_only(str(p))
    except RefusedCheckpoint as e:
        raise WeightsError(str(path), f"refusing to load {what} weights: {e}") from None
    except Exception as e:  # torch raises many types for a corrupt file
        raise WeightsError(str(path), f"cannot read {what} weights: {str(e).strip().splitlines()[0]}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(str(path), f"no state dict in the {what} weights file")
    return state


def load_into(module: nn.Module, state: dict, path: str, what: str) -> None:
    want = module.state_dict()
    missing = sorted(set(want) - set(state))
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in want.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or bad:
        problem = f"missing keys {', '.join(missing[:4])}" if missing else f"shape mismatch {', '.join(bad[:4])}"
        raise WeightsError(path, f"not {what} weights: {problem}")
    module.load_state_dict({k: state[k] for k in want}, strict=True)


def vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


class _VGG16(nn.Module):
    """torchvision's VGG16 `features` (the classifier is not needed and its keys are ignored)."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for a, b in LPIPS_SLICES:
            for i in range(a, b):
                x = self.features[i](x)
            out.append(x)
        return out


class NetLinLayer(nn.Module):
    """LPIPS' 1x1 convolution weighting one layer's channels (`model.1.weight`)."""

    def __init__(self, cin: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Perceptual distance per image [N,1,1,1] of images in [-1,1]. Frozen (no gradient to it)."""

    shift: torch.Tensor  # buffers
    scale: torch.Tensor

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.net = _VGG16()
        for i, c in enumerate(LPIPS_CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))
        self.eval().requires_grad_(False)

    @classmethod
    def from_files(cls, vgg16: str, lin: str) -> "LPIPS":
        m = cls()
        load_into(m.net, read_weights(vgg16, "VGG16", "vqvae.train.lpips_vgg16"), str(vgg16), "torchvision VGG16")
        lins = nn.ModuleDict({f"lin{i}": getattr(m, f"lin{i}") for i in range(len(LPIPS_CHANNELS))})
        load_into(lins, read_weights(lin, "LPIPS linear layer", "vqvae.train.lpips_lin"), str(lin), "LPIPS (vgg.pth)")
        return m

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # dropout in the linear layers stays off

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = torch.zeros((), device=x.device)  # 0-dim: adds nothing, keeps the terms' dtype
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((a - b) ** 2).mean((2, 3), keepdim=True)
        return total


class NLayerDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, one per overlapping patch (taming's layout)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def disc_factor(step: int, disc_start: int, factor: float = 1.0) -> float:
    """The GAN terms are off (0) before `disc_start` steps, then `factor`."""
    return factor if step >= disc_start else 0.0


def adaptive_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    disc_weight: float = 1.0,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """taming's balance: |d rec / d last| / (|d g / d last| + 1e-4), clamped, times disc_weight."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(w, 0.0, max_weight).detach() * disc_weight

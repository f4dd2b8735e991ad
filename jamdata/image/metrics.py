"""Reconstruction metrics for VQ-VAE training: PSNR, codebook usage and perplexity, and rFID.

rFID is the Fréchet distance between Inception-v3 pool features of images and of their
reconstructions. The network is torchvision's `inception_v3` module for module, so its state dict
file (`inception_v3_google-0cc3c7bd.pth`, which the user supplies) loads key for key. Those weights
expect inputs in [-1, 1] (torchvision's `transform_input` maps ImageNet-normalised inputs there;
our images already are), resized to 299x299. Feature statistics are running sums (a mean vector and
a 2048x2048 float64 co-moment: 32 MiB), so memory does not grow with the number of images. The
figure uses torchvision's port of the weights, not the TensorFlow graph of the FID paper: compare
rFIDs from this code with each other, not with published tables.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from jamdata.image.losses import load_into, read_weights


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR (dB) over images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def usage(hist: torch.Tensor) -> dict:
    """Codes used and perplexity (exp of the code entropy) of a code histogram."""
    p = hist.double() / max(1.0, float(hist.sum()))
    p = p[p > 0]
    return {"codes_used": int((hist > 0).sum()), "perplexity": float(math.exp(-(p * p.log()).sum()))}


# -- Inception v3 (torchvision layout) ----------------------------------------------------------
class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _c(cin: int, cout: int, k, s: int = 1, p=0) -> BasicConv2d:
    return BasicConv2d(cin, cout, kernel_size=k, stride=s, padding=p)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _c(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _c(cin, 48, 1), _c(48, 64, 5, p=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _c(cin, 64, 1), _c(64, 96, 3, p=1)
        self.branch3x3dbl_3 = _c(96, 96, 3, p=1)
        self.branch_pool = _c(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _c(cin, 384, 3, s=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _c(cin, 64, 1), _c(64, 96, 3, p=1)
        self.branch3x3dbl_3 = _c(96, 96, 3, s=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, 2),
            ],
            1,
        )


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _c(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = _c(cin, c7, 1), _c(c7, c7, (1, 7), p=(0, 3))
        self.branch7x7_3 = _c(c7, 192, (7, 1), p=(3, 0))
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _c(cin, c7, 1), _c(c7, c7, (7, 1), p=(3, 0))
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _c(c7, c7, (1, 7), p=(0, 3)), _c(c7, c7, (7, 1), p=(3, 0))
        self.branch7x7dbl_5 = _c(c7, 192, (1, 7), p=(0, 3))
        self.branch_pool = _c(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _c(cin, 192, 1), _c(192, 320, 3, s=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _c(cin, 192, 1), _c(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _c(192, 192, (7, 1), p=(3, 0)), _c(192, 192, 3, s=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = _c(cin, 320, 1)
        self.branch3x3_1 = _c(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _c(384, 384, (1, 3), p=(0, 1)), _c(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _c(cin, 448, 1), _c(448, 384, 3, p=1)
        self.branch3x3dbl_3a = _c(384, 384, (1, 3), p=(0, 1))
        self.branch3x3dbl_3b = _c(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = _c(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(_pool(x)),
            ],
            1,
        )


class InceptionAux(nn.Module):
    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.conv0, self.conv1 = _c(cin, 128, 1), _c(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)


class InceptionV3(nn.Module):
    """torchvision's `inception_v3(aux_logits=True)` parameters; forward -> 2048-d pool features."""

    def __init__(self, num_classes: int = 1000, size: int = 299):
        super().__init__()
        self.size = size  # input side (the network's own: 299; at least 75)
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _c(3, 32, 3, s=2), _c(32, 32, 3)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = _c(32, 64, 3, p=1), _c(64, 80, 1), _c(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.AuxLogits = InceptionAux(768, num_classes)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = InceptionD(768), InceptionE(1280), InceptionE(2048)
        self.fc = nn.Linear(2048, num_classes)

    @classmethod
    def from_file(cls, path: str, size: int = 299) -> "InceptionV3":
        m = cls(size=size)
        load_into(m, read_weights(path, "Inception-v3", "vqvae.train.inception"), str(path), "torchvision inception_v3")
        return m.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3)).double()


class RunningStats:
    """Mean and covariance of feature vectors from running sums (memory independent of count)."""

    def __init__(self, dim: int = 2048):
        self.n, self.sum = 0, torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, feats: torch.Tensor) -> None:
        f = feats.double()
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.t() @ f

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / max(1, self.n - 1)
        return mu, cov


def frechet_distance(a: RunningStats, b: RunningStats) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), the trace root from symmetric eigenproblems."""
    mu1, s1 = a.mean_cov()
    mu2, s2 = b.mean_cov()
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.t()
    m = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((m + m.t()) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt)

"""The VQ-VAE network, module-for-module the taming-transformers VQModel layout.

Parameter names match taming / Chameleon checkpoints (`encoder.down.0.block.0.conv1.weight`,
`quantize.embedding.weight`, ...), so a real `vqgan.ckpt` loads into `VQModel` with a strict key
check (`jamdata.image.vqvae`: presets, building, checkpoint files). The quantizer can also learn
by EMA with dead-code restarts; its EMA statistics are non-persistent buffers, so saved
checkpoints keep the taming layout.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterable, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from jamdata.image.train_dist import CodebookSync


# -- building blocks (taming names) -------------------------------------------------------------
def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, c), num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)
        k = self.k(h).reshape(b, c, hh * ww).transpose(1, 2)
        v = self.v(h).reshape(b, c, hh * ww).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


def _attn(c: int, groups: int, attn_type: str) -> nn.Module:
    return AttnBlock(c, groups) if attn_type == "vanilla" else nn.Identity()


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder or decoder (plus `downsample` / `upsample` where it changes)."""

    block: nn.ModuleList
    attn: nn.ModuleList
    downsample: Downsample  # set only where the resolution changes (hasattr)
    upsample: Upsample


class _Mid(nn.Module):
    block_1: ResnetBlock
    attn_1: nn.Module
    block_2: ResnetBlock


class Encoder(nn.Module):
    mid: _Mid

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = False,
        dropout: float = 0.0,
        norm_groups: int = 32,
        attn_type: str = "vanilla",
        **_: Any,
    ):
        super().__init__()
        g = norm_groups
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            cin, cout = ch * in_mult[i], ch * mult
            for _r in range(num_res_blocks):
                level.block.append(ResnetBlock(cin, cout, g, dropout))
                cin = cout
                if res in attn_resolutions:
                    level.attn.append(_attn(cin, g, "vanilla"))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = _Mid()
        self.mid.block_1 = ResnetBlock(cin, cin, g, dropout)
        self.mid.attn_1 = _attn(cin, g, attn_type)
        self.mid.block_2 = ResnetBlock(cin, cin, g, dropout)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in cast(Iterable[_Level], self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    mid: _Mid

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: list[int],
        num_res_blocks: int,
        attn_resolutions: list[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        norm_groups: int = 32,
        attn_type: str = "vanilla",
        **_: Any,
    ):
        super().__init__()
        g = norm_groups
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, 1, 1)
        self.mid = _Mid()
        self.mid.block_1 = ResnetBlock(cin, cin, g, dropout)
        self.mid.attn_1 = _attn(cin, g, attn_type)
        self.mid.block_2 = ResnetBlock(cin, cin, g, dropout)
        ups: list[nn.Module] = []
        for i in reversed(range(len(ch_mult))):
            level = _Level()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            cout = ch * ch_mult[i]
            for _r in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cout, g, dropout))
                cin = cout
                if res in attn_resolutions:
                    level.attn.append(_attn(cin, g, "vanilla"))
            if i != 0:
                level.upsample = Upsample(cin)
                res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in cast(Iterable[_Level], reversed(self.up)):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer (taming VectorQuantizer2 distances, beta=0.25).

    Training: `ema=True` moves codes to the running mean of their assigned encoder outputs and
    restarts codes unused for a while from random encoder outputs of the batch, which keeps the
    codebook from collapsing; `ema=False` learns the codebook by gradient (codebook loss)."""

    cluster_size: torch.Tensor  # buffers
    embed_avg: torch.Tensor

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, decay: float = 0.99, dead_threshold: float = 1.0):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.decay, self.dead_threshold = decay, dead_threshold
        self.ema = False
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.register_buffer("cluster_size", torch.ones(n_e), persistent=False)
        self.register_buffer("embed_avg", self.embedding.weight.detach().clone(), persistent=False)
        # Data-parallel training sets this (see jamdata.image.train_dist.CodebookSync): EMA statistics
        # are summed over ranks and restarted codes taken from rank 0, so every rank keeps one codebook.
        self.sync: CodebookSync | None = None

    def indices(self, z_flat: torch.Tensor) -> torch.Tensor:
        w = self.embedding.weight
        d = z_flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1) - 2 * torch.einsum("bd,dn->bn", z_flat, w.t())
        return d.argmin(1)

    @torch.no_grad()
    def init_from(self, z_flat: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Seed the codebook with encoder outputs (random rows, repeated if too few)."""
        idx = torch.randint(0, z_flat.shape[0], (self.n_e,), generator=generator)
        self.embedding.weight.copy_(z_flat[idx])
        self.embed_avg.copy_(self.embedding.weight)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, z_flat: torch.Tensor, idx: torch.Tensor, generator: torch.Generator | None) -> None:
        onehot = F.one_hot(idx, self.n_e).type(z_flat.dtype)
        counts, sums = onehot.sum(0), onehot.t() @ z_flat
        if self.sync is not None:
            counts, sums = self.sync.sum(counts), self.sync.sum(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + self.n_e * 1e-5) * n
        self.embedding.weight.copy_(self.embed_avg / size.unsqueeze(1))
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            pick = torch.randint(0, z_flat.shape[0], (int(dead.sum()),), generator=generator)
            self.embedding.weight[dead] = z_flat[pick]
            self.embed_avg[dead] = z_flat[pick]
            self.cluster_size[dead] = 1.0
            if self.sync is not None:
                self.sync.share(self.embedding.weight, self.embed_avg, self.cluster_size)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """z [N,C,H,W] -> (z_q with straight-through gradient, loss, codes [N,H,W])."""
        zp = z.permute(0, 2, 3, 1).contiguous()
        flat = zp.view(-1, self.e_dim)
        idx = self.indices(flat)
        if self.training and self.ema:
            self._ema_update(flat.detach(), idx, generator)
        zq = self.embedding(idx).view(zp.shape)
        commit = F.mse_loss(zp, zq.detach())
        loss = self.beta * commit if self.ema else F.mse_loss(zq, zp.detach()) + self.beta * commit
        zq = zp + (zq - zp).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), loss, idx.view(zp.shape[:3])

    def embed_code(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """`encode(images in [-1,1], NCHW) -> codes [N,h,w]`, `decode(codes) -> images`."""

    def __init__(self, params: dict):
        super().__init__()
        self.params = copy.deepcopy(params)
        dd = self.params["ddconfig"]
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(int(self.params["n_embed"]), int(self.params["embed_dim"]))
        self.quant_conv = nn.Conv2d(dd["z_channels"], self.params["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(self.params["embed_dim"], dd["z_channels"], 1)

    @property
    def resolution(self) -> int:
        return int(self.params["ddconfig"]["resolution"])

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.params["ddconfig"]["ch_mult"]) - 1)

    @property
    def n_embed(self) -> int:
        return int(self.params["n_embed"])

    def grid(self, resolution: int | None = None) -> tuple[int, int]:
        side = (resolution or self.resolution) // self.downsample_factor
        return side, side

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        zq, qloss, codes = self.quantize(self.latent(x), generator)
        return self.decoder(self.post_quant_conv(zq)), qloss, codes

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.latent(images)
        n, c, h, w = z.shape
        return self.quantize.indices(z.permute(0, 2, 3, 1).reshape(-1, c)).view(n, h, w)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.embed_code(codes.long()))).clamp(-1, 1)

    def taming_config(self) -> dict:
        return {"model": {"target": "taming.models.vqgan.VQModel", "params": copy.deepcopy(self.params)}}

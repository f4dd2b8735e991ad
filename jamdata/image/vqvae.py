"""The VQ-VAE image tokenizer, module-for-module the taming-transformers VQModel layout.

Parameter names match taming / Chameleon checkpoints (`encoder.down.0.block.0.conv1.weight`,
`quantize.embedding.weight`, ...), so a real `vqgan.ckpt` (its `state_dict`) loads with a strict
key check. Checkpoints are read weights-only (`jamdata.safe_load`): a file that needs code to
unpickle is refused before any of it runs. A checkpoint inside a dataset directory is checked
against the directory's manifest (size, or size and sha256) before use, and weights that are not
finite are refused. The quantizer can also learn by EMA with dead-code restarts; its EMA
statistics are non-persistent buffers, so saved checkpoints keep the taming layout.

A model directory holds `vqvae.ckpt` and `vqvae.yaml` (taming's `model.params` layout).
"""

from __future__ import annotations

import copy
import math
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from jamdata.io import InputError, fs_and_path, open_url
from jamdata.safe_load import RefusedCheckpoint, inert, load_weights_only

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]  # the same function

if TYPE_CHECKING:
    from jamdata.image.train_dist import CodebookSync

CKPT_FILE = "vqvae.ckpt"
YAML_FILE = "vqvae.yaml"
# Keys of a taming training checkpoint that belong to the GAN/perceptual loss, not the tokenizer.
IGNORED_PREFIXES = ("loss.",)
# How a model file in a dataset directory is checked against its manifest before use.
VERIFY_MODES = ("sha256", "size")

# What a taming / Chameleon / Lightning `.ckpt` may need besides tensors and plain containers:
# numpy scalars and dtypes (under numpy 1.x and 2.x names; a dtype is rebuilt as its own class),
# and builtin types stored as values (omegaconf records `dict`, `int` as element types)...
_NUMPY_DTYPES = {type(np.dtype(c)) for c in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]}
_SAFE_GLOBALS: list = [
    (np.dtype, "numpy.dtype"),
    *sorted(_NUMPY_DTYPES, key=str),
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    *((t, f"builtins.{t.__name__}") for t in (dict, list, tuple, int, float, str, bool)),
]
# ... and metadata classes that are never used, loaded as inert stand-ins: Lightning (< 1.5) keys
# callback states by the callback class; `hyper_parameters` may hold an AttributeDict or omegaconf
# containers. Anything else is refused with its name.
_LIGHTNING = ("pytorch_lightning", "lightning.pytorch")
_SAFE_GLOBALS += inert(
    [
        f"{pl}.callbacks.{mod}"
        for pl in _LIGHTNING
        for mod in (
            "model_checkpoint.ModelCheckpoint",
            "early_stopping.EarlyStopping",
            "lr_monitor.LearningRateMonitor",
        )
    ]
    + [
        f"omegaconf.{n}"
        for n in (
            "dictconfig.DictConfig",
            "listconfig.ListConfig",
            "base.ContainerMetadata",
            "base.Metadata",
            *(f"nodes.{k}Node" for k in ("Any", "String", "Integer", "Float", "Boolean", "Bytes", "Path")),
        )
    ]
    + ["typing.Any"],
    as_dict=[
        "collections.defaultdict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
    ],
)


class CheckpointError(InputError):
    """A checkpoint that cannot be used: unsafe to unpickle, different from its manifest, not
    finite, or not fitting the configured model; names the file and what is wrong."""


def _dd(
    resolution: int,
    ch: int,
    ch_mult: list[int],
    num_res_blocks: int,
    z_channels: int,
    attn_resolutions: list[int] | None = None,
    **extra: Any,
) -> dict:
    return {
        "double_z": False,
        "z_channels": z_channels,
        "resolution": resolution,
        "in_channels": 3,
        "out_ch": 3,
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": attn_resolutions or [],
        "dropout": 0.0,
        **extra,
    }


# Shipped configurations (taming `model.params`). `norm_groups`/`attn_type` are extensions for
# small models; the taming layout uses 32 groups and vanilla mid-block attention.
PRESETS: dict[str, dict] = {
    # CM3leon / Make-A-Scene geometry: 256x256 -> 32x32 codes from 8192.
    "256px-f8": {"embed_dim": 256, "n_embed": 8192, "ddconfig": _dd(256, 128, [1, 2, 2, 4], 2, 256)},
    # Chameleon's public VQGAN: 512x512 -> 32x32, exactly the taming VQModel layout.
    "chameleon-512px-f16": {"embed_dim": 256, "n_embed": 8192, "ddconfig": _dd(512, 128, [1, 1, 2, 2, 4], 2, 256)},
    # Demo / tests: trains in well under a minute on two CPU cores; 64x64 -> 16x16 codes.
    "tiny-64px-f4": {
        "embed_dim": 16,
        "n_embed": 256,
        "ddconfig": _dd(64, 16, [1, 2, 2], 1, 16, norm_groups=4, attn_type="none"),
    },
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown VQ-VAE config {name!r} (known: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])


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


def build_vqvae(spec: str | dict, n_embed: int | None = None) -> VQModel:
    """From a preset name or taming `model.params`; `n_embed` overrides the codebook size."""
    params = preset(spec) if isinstance(spec, str) else copy.deepcopy(params_from_yaml(spec, "model config"))
    if n_embed is not None:
        params["n_embed"] = int(n_embed)
    return VQModel(params)


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(model: VQModel, out_dir: str | Path, extra: dict | None = None) -> tuple[str, str]:
    """`vqvae.ckpt` ({"state_dict": ...} like taming/Chameleon) and `vqvae.yaml`, atomically."""
    from jamdata.io import atomic_write

    out = str(out_dir).rstrip("/")
    ckpt, cfg = f"{out}/{CKPT_FILE}", f"{out}/{YAML_FILE}"
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(ckpt, "wb") as f:
        torch.save({"state_dict": state, **(extra or {})}, f)
    with atomic_write(cfg, "w") as f:
        yaml.safe_dump(model.taming_config(), f, sort_keys=False)
    return ckpt, cfg


def params_from_yaml(data: dict, where: str) -> dict:
    """Accept taming's full file (`model.params`), its `params`, or the params themselves."""
    node = data
    if isinstance(node, dict) and "model" in node:
        node = node["model"]
    if isinstance(node, dict) and "params" in node:
        node = node["params"]
    if not isinstance(node, dict) or "ddconfig" not in node or "n_embed" not in node:
        raise CheckpointError(where, "not a taming VQModel config (needs model.params.ddconfig and n_embed)")
    return node


def load_state(model: VQModel, state: dict, where: str) -> None:
    """Strict load: every model key present with its shape, no unknown keys (loss.* ignored), and
    only finite values (a NaN would map every image to one code without any other error)."""
    state = {k: v for k, v in state.items() if not str(k).startswith(IGNORED_PREFIXES)}
    odd = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(where, f"state_dict entries that are not named tensors: {', '.join(odd[:8])}")
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = ([f"missing keys: {show(missing)}"] if missing else []) + (
            [f"unexpected keys: {show(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(where, "checkpoint does not match the model config; " + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in want.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(where, "shape mismatch (checkpoint vs model): " + ", ".join(bad[:8]))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(
            where,
            "non-finite values (NaN or inf) in "
            + ", ".join(nonfinite[:8])
            + (f" (+{len(nonfinite) - 8} more)" if len(nonfinite) > 8 else ""),
        )
    model.load_state_dict(state, strict=True)


def _find_yaml(ckpt: str) -> str | None:
    from jamdata.io import exists

    root, name = posixpath.split(ckpt)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for cand in (
        posixpath.join(root, stem + ".yaml"),
        posixpath.join(root, YAML_FILE),
        posixpath.join(root, "vqgan.yaml"),
    ):
        if exists(cand):
            return cand
    return None


def check_manifest(files: list[str], verify: str = "sha256") -> None:
    """Check model files against the manifest of the dataset directory holding them (a vqvae
    dataset lists `vqvae.ckpt` and `vqvae.yaml` with size and sha256). `verify`: "size" compares
    sizes only (catches truncation), "sha256" sizes and hashes (any altered byte). A directory
    without a manifest is not a dataset and is not checked."""
    from jamdata.io import sha256_file
    from jamdata.manifest import MANIFEST, read_manifest

    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    for path in files:
        root = posixpath.dirname(path) or "."
        fs, manifest = fs_and_path(f"{root}/{MANIFEST}")
        if not fs.exists(manifest):
            continue
        row = {r["path"]: r for r in read_manifest(root)["shards"]}.get(posixpath.basename(path))
        if row is None:
            raise CheckpointError(path, f"not listed in {root}/{MANIFEST}; refusing an unverified model file")
        size = int(fs.size(fs_and_path(path)[1]))
        if size != row["bytes"]:
            raise CheckpointError(path, f"{size} bytes but {MANIFEST} says {row['bytes']} (truncated or altered)")
        if verify == "sha256" and sha256_file(path) != row["sha256"]:
            raise CheckpointError(path, f"sha256 differs from {MANIFEST} (altered or damaged)")


def read_state_dict(ckpt: str) -> dict:
    """The `state_dict` of a checkpoint file, read weights-only (see `_SAFE_GLOBALS`)."""
    try:
        with open_url(ckpt, "rb") as f:
            blob = load_weights_only(f, _SAFE_GLOBALS)
    except FileNotFoundError:
        raise FileNotFoundError(f"VQ-VAE checkpoint {ckpt} does not exist") from None
    except RefusedCheckpoint as e:
        raise CheckpointError(ckpt, f"refusing to load: {e}") from None
    except Exception as e:  # torch raises many types for a corrupt file
        raise CheckpointError(ckpt, f"cannot read checkpoint: {str(e).strip().splitlines()[0]}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(ckpt, "no state_dict in the checkpoint")
    return state


def load_vqvae(
    path: str | Path, config: str | dict | None = None, device: str = "cpu", verify: str = "sha256"
) -> VQModel:
    """Load a model directory (`vqvae.ckpt` + `vqvae.yaml`) or a taming/Chameleon `.ckpt`.

    `config`: a preset name or params used instead of (or when there is no) yaml beside the
    checkpoint. Files in a dataset directory are first checked against its manifest (`verify`:
    "sha256" or "size", see `check_manifest`). The model comes back in eval mode."""
    from jamdata.io import exists

    path = str(path)
    fs, p = fs_and_path(path)
    ckpt = f"{path.rstrip('/')}/{CKPT_FILE}" if fs.isdir(p) else path  # a path or a URL, never pathlib
    if not exists(ckpt):
        raise FileNotFoundError(f"VQ-VAE checkpoint {ckpt} does not exist")
    yml = _find_yaml(ckpt) if config is None else None
    if config is None and yml is None:
        raise CheckpointError(ckpt, f"no {YAML_FILE} (or vqgan.yaml) beside the checkpoint; pass a config")
    check_manifest([ckpt] + ([yml] if yml else []), verify)
    if yml is not None:
        with open_url(yml, "r") as f:
            params = params_from_yaml(yaml.safe_load(f), yml)
    else:
        assert config is not None  # no config and no yaml: refused above
        params = preset(config) if isinstance(config, str) else params_from_yaml(config, "config")
    model = VQModel(params)
    state = read_state_dict(ckpt)
    load_state(model, state, ckpt)
    return model.to(device).eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def perplexity(hist: torch.Tensor) -> float:
    p = hist.double() / max(1.0, float(hist.sum()))
    p = p[p > 0]
    return float(math.exp(-(p * p.log()).sum()))

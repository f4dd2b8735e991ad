"""VQ-VAE tokenizer files: presets, building, and checkpoints (the network: `vqvae_net.py`).

Checkpoints hold taming / Chameleon state-dict keys (`encoder.down.0.block.0.conv1.weight`,
`quantize.embedding.weight`, ...), so a real `vqgan.ckpt` (its `state_dict`) loads with a strict
key check. Checkpoints are read weights-only (`jamdata.safe_load`): a file that needs code to
unpickle is refused before any of it runs. A checkpoint inside a dataset directory is checked
against the directory's manifest (size, or size and sha256) before use, and weights that are not
finite are refused.

A model directory holds `vqvae.ckpt` and `vqvae.yaml` (taming's `model.params` layout).
"""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from jamdata.image.vqvae_net import VQModel
from jamdata.io import InputError, fs_and_path, open_url
from jamdata.safe_load import RefusedCheckpoint, inert, load_weights_only

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]  # the same function

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

"""Backbones written as Hugging Face `LlamaForCausalLM` directories (the inverse of hf.py's
import): config.json from the backbone config, the weights as safetensors, sharded above a size,
each file moved into place whole. Only a LLaMA-layout model exports; a JAM-Cross or JAM-Width
model is refused in one line naming what differs."""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from pathlib import Path

import fsspec
import torch
from torch import nn

from jamtrain.models.backbone import Backbone
from jamtrain.models.config import BackboneConfig
from jamtrain.models.hf import ARCHITECTURE, CONFIG, INDEX, SINGLE, HFError, _is_local, _join, hf_names

# keys of config.json that the backbone config determines (replaced, never copied from `base`)
OWNED = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "tie_word_embeddings",
    "initializer_range",
    "attention_bias",
    "mlp_bias",
    "dtype",
    "torch_dtype",
    "transformers_version",
)


def exportable(model: nn.Module) -> Backbone:
    """`model` if it has a LLaMA layout, else a one-line refusal naming what differs."""
    from jamtrain.models.fusion import JamCross

    if isinstance(model, JamCross):
        raise HFError(
            "a JAM-Cross model (two streams joined by cross-attention) has no LLaMA layout; "
            "export a backbone or a JAM-Uniform model"
        )
    if not isinstance(model, Backbone):
        raise HFError(f"not a jam backbone: {type(model).__name__}")
    cfg = model.cfg
    if cfg.norm_groups != 1:
        raise HFError(
            f"norm_groups {cfg.norm_groups}: a JAM-Width model normalises each half separately, "
            "which LlamaForCausalLM cannot express"
        )
    for key, want in (("norm", "rmsnorm"), ("activation", "swiglu"), ("positions", "rotary")):
        if getattr(cfg, key) != want:
            raise HFError(
                f"{key} {getattr(cfg, key)!r}: only LLaMA-style backbones export "
                f"(norm rmsnorm, activation swiglu, positions rotary)"
            )
    return model


def config_to_hf(cfg: BackboneConfig, dtype: torch.dtype, base: dict | None = None) -> dict:
    """config.json for `cfg`: the keys the backbone describes, the rest (token ids, ...) from `base`."""
    out = {k: v for k, v in (base or {}).items() if k not in OWNED}
    out.update(
        architectures=[ARCHITECTURE],
        model_type="llama",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"},
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        attention_bias=False,
        mlp_bias=False,
        dtype=str(dtype).removeprefix("torch."),
    )
    return dict(sorted(out.items()))


def _shards(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, cut into shards of at most `max_bytes` (a larger tensor goes alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        n = t.numel() * t.element_size()
        if max_bytes is not None and shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def _put(fs, path: str, write) -> None:
    """Write a file beside `path` with `write(local_path)` and move it into place, so a reader never
    sees a partial file."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if _is_local(fs):
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with tempfile.TemporaryDirectory() as d:
        write(os.path.join(d, "f"))
        fs.put_file(os.path.join(d, "f"), tmp)
    fs.mv(tmp, path)


def _weight_files(fs, root: str) -> list[str]:
    """Weight files and indexes already in `root` (safetensors or pickled, single or sharded)."""
    pattern = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin)(\.index\.json)?$")
    paths = fs.ls(root, detail=False) if fs.isdir(root) else []
    return [p for p in paths if pattern.match(p.rstrip("/").rsplit("/", 1)[-1])]


def export_hf(
    model: nn.Module,
    out: str,
    dtype: torch.dtype | None = None,
    max_shard_size: int | None = None,
    base: dict | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write `model` as a Hugging Face LlamaForCausalLM directory (local path or fsspec URL):
    config.json + model.safetensors, or shards + model.safetensors.index.json when the weights
    exceed `max_shard_size` bytes. `dtype` None keeps the weights' dtype. Returns the file names."""
    from safetensors.torch import save_file

    cfg = exportable(model).cfg
    fs, root = fsspec.core.url_to_fs(str(out))
    existing = _weight_files(fs, root)
    if (existing or fs.exists(_join(root, CONFIG))) and not overwrite:
        raise HFError(f"{out} already holds a checkpoint; pass --overwrite to replace it")
    ours = {v: k for k, v in hf_names(cfg).items()}
    sd = model.state_dict()
    state = {ours[k]: sd[k].detach().cpu() for k in ours}
    dtype = dtype or state["model.embed_tokens.weight"].dtype
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    fs.makedirs(root, exist_ok=True)
    for path in existing:  # stale shards beside new ones would load as one model
        fs.rm(path)
    shards = _shards(state, max_shard_size)
    n = len(shards)
    names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        _put(fs, _join(root, name), lambda p, s=shard: save_file(s, p, metadata={"format": "pt"}))
    files = list(names)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        _put(fs, _join(root, INDEX), lambda p: Path(p).write_text(json.dumps(index, indent=2) + "\n"))
        files.append(INDEX)
    hf = config_to_hf(cfg, dtype, base)
    _put(fs, _join(root, CONFIG), lambda p: Path(p).write_text(json.dumps(hf, indent=2) + "\n"))
    return [CONFIG, *files]

"""Hugging Face `LlamaForCausalLM` directories read into the project's checkpoint format.

Import maps transformers' config.json and tensor names onto a LLaMA-style `Backbone` (RMSNorm,
SwiGLU, rotary positions in HF's rotate-half layout, grouped-query attention, tied or untied
head), so a pretrained LLM can be a JAM parent; export (hf_export.py) is the inverse, so a trained
backbone (or a JAM-Uniform model) can be evaluated with other tools. Weights are read with
safetensors only: a pickled `pytorch_model.bin` is never loaded, since unpickling runs arbitrary
code. Anything the
backbone cannot compute exactly (another architecture, biases, scaled RoPE, ...) is refused in one
line naming the key, rather than imported into a model that would silently differ."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import fsspec
import torch

from jamtrain.models.backbone import Backbone
from jamtrain.models.checkpoint import CheckpointError, save_state
from jamtrain.models.config import BackboneConfig
from jamtrain.models.resize import NOISE, extend_state

ARCHITECTURE = "LlamaForCausalLM"
CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# buffers some checkpoints store; the backbone recomputes them
IGNORED = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")
# (HF name inside a layer, backbone name inside a layer)
LAYER_NAMES = (
    *((f"self_attn.{p}_proj.weight", f"attn.{p}_proj.weight") for p in "qkvo"),
    *((f"mlp.{p}_proj.weight", f"ffn.{p}.weight") for p in ("gate", "up", "down")),
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
)


class HFError(CheckpointError):
    """A Hugging Face checkpoint that the LLaMA-style backbone cannot represent exactly."""


def _join(src: str, name: str) -> str:
    return src.rstrip("/") + "/" + name


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


# ------------------------------------------------------------------------------------------ config
def load_hf_config(src: str) -> dict:
    """The parsed config.json of a model directory (local path or fsspec URL)."""
    path = _join(src, CONFIG)
    try:
        with fsspec.open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        raise HFError(f"{src}: no {CONFIG} (not a Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise HFError(f"{path}: not valid JSON ({e})") from None


def _rope(hf: dict, where: str) -> float:
    """rope_theta from `rope_parameters` (transformers 5) or the older top-level keys; refuses
    scaled variants, which the backbone does not implement."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for key, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(d, dict):
            raise HFError(f"{where}: {key} must be an object, got {d!r}")
        kind = d.get("rope_type", d.get("type", "default"))
        if kind not in (None, "default"):
            raise HFError(f"{where}: unsupported rope_type {kind!r} in {key} (only unscaled RoPE is implemented)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where: str = CONFIG) -> BackboneConfig:
    """The backbone config a transformers LLaMA config describes, or a one-line refusal."""
    if hf.get("model_type") != "llama":
        raise HFError(f"{where}: unsupported architecture: model_type {hf.get('model_type')!r} (expected 'llama')")
    archs = hf.get("architectures")
    if archs is not None and list(archs) != [ARCHITECTURE]:
        raise HFError(f"{where}: unsupported architecture: architectures {archs!r} (expected ['{ARCHITECTURE}'])")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFError(f"{where}: unsupported hidden_act {hf['hidden_act']!r} (LLaMA's SwiGLU uses silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise HFError(f"{where}: {key} is true; the backbone has no biases")
    need = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    for key in need:
        if not isinstance(hf.get(key), int) or hf[key] < 1:
            raise HFError(f"{where}: {key} must be a positive integer, got {hf.get(key)!r}")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if d % heads:
        raise HFError(f"{where}: hidden_size {d} is not divisible by num_attention_heads {heads}")
    if hf.get("head_dim") not in (None, d // heads):
        raise HFError(f"{where}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads = {d // heads}")
    kv = hf.get("num_key_value_heads") or heads
    if not isinstance(kv, int) or heads % kv:
        raise HFError(f"{where}: num_key_value_heads {kv!r} must divide num_attention_heads {heads}")
    theta = _rope(hf, where)
    try:
        return BackboneConfig(
            vocab_size=hf["vocab_size"],
            n_layers=hf["num_hidden_layers"],
            d_model=d,
            n_heads=heads,
            n_kv_heads=0 if kv == heads else kv,
            d_ff=hf["intermediate_size"],
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            positions="rotary",
            activation="swiglu",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except ValueError as e:
        raise HFError(f"{where}: {e}") from None


def read_config(src: str) -> BackboneConfig:
    """The backbone config of the Hugging Face model directory `src` (nothing else is read)."""
    return config_from_hf(load_hf_config(src), _join(src, CONFIG))


def hf_names(cfg: BackboneConfig) -> dict[str, str]:
    """Hugging Face tensor name -> backbone state-dict name, for every tensor the config predicts."""
    names = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "norm.weight"}
    for i in range(cfg.n_layers):
        for hf, ours in LAYER_NAMES:
            names[f"model.layers.{i}.{hf}"] = f"layers.{i}.{ours}"
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "head.weight"
    return names


def _shapes(cfg: BackboneConfig) -> dict[str, tuple[int, ...]]:
    """Backbone state-dict name -> shape, without allocating the weights."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Backbone(cfg).state_dict().items()}


# ------------------------------------------------------------------------------------------ import
def _shard_files(src: str) -> list[str]:
    """The safetensors files of `src`: the shards its index names, or the single file."""
    fs, root = fsspec.core.url_to_fs(src)
    if fs.exists(_join(root, INDEX)):
        with fs.open(_join(root, INDEX), "r") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise HFError(f"{_join(src, INDEX)}: not a safetensors index ({type(e).__name__}: {e})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if "/" in name or not name.endswith(".safetensors"):
                raise HFError(f"{_join(src, INDEX)}: weight_map names {name!r}, not a .safetensors file beside it")
        return files
    if fs.exists(_join(root, SINGLE)):
        return [SINGLE]
    pickled = fs.exists(_join(root, "pytorch_model.bin")) or fs.exists(_join(root, "pytorch_model.bin.index.json"))
    why = (
        (
            " (pytorch_model.bin is a pickle, which is never loaded: convert it once where you trust the file, "
            "with save_pretrained(..., safe_serialization=True))"
        )
        if pickled
        else ""
    )
    raise HFError(f"{src}: no {SINGLE} or {INDEX}{why}")


def _read_shard(src: str, name: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; a remote file is copied to a temporary local file
    first (one at a time) so that safetensors can memory-map it."""
    from safetensors import safe_open

    path = _join(src, name)
    fs, fpath = fsspec.core.url_to_fs(path)
    if not fs.exists(fpath):
        raise HFError(f"{path}: missing shard (named by {INDEX})")
    local, tmp = (fpath if _is_local(fs) else None), None
    try:
        if local is None:
            fd, tmp = tempfile.mkstemp(suffix=".safetensors")
            os.close(fd)
            fs.get_file(fpath, tmp)
            local = tmp
        out = {}
        with safe_open(local, "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                out[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out
    except HFError:
        raise
    except Exception as e:
        raise HFError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})") from None
    finally:
        if tmp is not None:
            os.unlink(tmp)


def read_weights(src: str, cfg: BackboneConfig, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The backbone state dict of `src`, every tensor checked against what `cfg` predicts."""
    names, shapes = hf_names(cfg), _shapes(cfg)
    state: dict[str, torch.Tensor] = {}
    for file in _shard_files(src):
        for key, t in _read_shard(src, file, dtype).items():
            if IGNORED.match(key) or (key == "lm_head.weight" and cfg.tie_embeddings):
                continue
            if key not in names:
                raise HFError(f"{_join(src, file)}: unexpected tensor {key!r} (config.json does not predict it)")
            ours = names[key]
            if ours in state:
                raise HFError(f"{src}: tensor {key!r} is stored twice")
            if tuple(t.shape) != shapes[ours]:
                raise HFError(
                    f"{_join(src, file)}: {key} has shape {tuple(t.shape)}, config.json implies {shapes[ours]}"
                )
            state[ours] = t
    for key, ours in names.items():
        if ours not in state:
            raise HFError(f"{src}: missing tensor {key!r}")
    return state


def import_checkpoint(
    src: str,
    out: str | Path,
    dtype: torch.dtype | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    noise: float = NOISE,
) -> tuple[BackboneConfig, Path]:
    """Convert the HF model directory `src` into a backbone checkpoint at `out` (format by suffix),
    optionally cast to `dtype` and grown to `vocab_size` rows. Returns (config written, path).
    The description keeps the source's config.json (`hf_config`, for export) and `source`."""
    hf = load_hf_config(src)
    cfg = config_from_hf(hf, _join(src, CONFIG))
    state = read_weights(src, cfg, dtype)
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        cfg, state = extend_state(state, cfg, vocab_size, seed, noise)
    meta = {"kind": "backbone", "config": cfg.to_dict(), "hf_config": hf, "source": str(src)}
    return cfg, save_state({k: v.contiguous() for k, v in state.items()}, meta, out)

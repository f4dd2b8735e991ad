"""Fusion parents read tensor by tensor, so fusing two 7B parents never holds either one whole.

`ParentWeights` is what the fusions (fusion.py) read from: a backbone config plus `tensor(key)`.
From a file (`open_parent`) a tensor is read only when asked for: safetensors through `safe_open`
(memory-mapped, one tensor copied out at a time), a torch file through `torch.load(mmap=True)`.
From a built `Backbone` (`as_parent`) it is a view of the module's own tensors, the eager path.
A vocabulary extension (resize.py) is applied on the fly to the token table and untied head.

`parent_config` reads only a parent's architecture (safetensors header, `config.json` of a
Hugging Face directory, local or fsspec URL), for `--dry-run` sizing without weights."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import torch

from jamtrain.models.backbone import Backbone
from jamtrain.models.checkpoint import CheckpointError, read_description
from jamtrain.models.config import BackboneConfig
from jamtrain.models.resize import ROW_KEYS, extend_state


class ParentWeights:
    """A backbone's tensors by state-dict key, read lazily; `cfg` is its architecture."""

    def __init__(self, cfg: BackboneConfig, read, keys, where: str):
        self.cfg, self._read, self._keys, self.where = cfg, read, list(keys), where
        self._override: dict[str, torch.Tensor] = {}

    def keys(self) -> list[str]:
        return list(self._keys)

    def tensor(self, key: str) -> torch.Tensor:
        if key in self._override:
            return self._override[key]
        if key not in self._keys:
            raise CheckpointError(f"{self.where}: no tensor {key!r} (not a backbone of this architecture)")
        return self._read(key)

    def head_weight(self) -> torch.Tensor:
        return self.tensor("tok_emb.weight" if self.cfg.tie_embeddings else "head.weight")

    def extended(self, vocab_size: int, seed: int, noise: float) -> "ParentWeights":
        """The same parent grown to `vocab_size` rows (only the row tensors are read and grown)."""
        rows = {k: self.tensor(k) for k in ROW_KEYS if k in self._keys}
        cfg, grown = extend_state(rows, self.cfg, vocab_size, seed, noise)
        out = ParentWeights(cfg, self._read, self._keys, self.where)
        out._override = {**self._override, **grown}
        return out


def as_parent(model: Backbone) -> ParentWeights:
    """A built backbone as a parent (its own tensors, nothing copied)."""
    state = model.state_dict(keep_vars=False)
    return ParentWeights(model.cfg, state.__getitem__, state.keys(), type(model).__name__)


def open_parent(path: str | Path, cfg: BackboneConfig | None = None) -> ParentWeights:
    """A backbone checkpoint file (from `save_model` / `jamtrain model import`) opened for
    tensor-by-tensor reads; `cfg` describes a bare state dict without a description."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            meta = read_description(path)
            handle = safe_open(str(path), "pt")  # memory-mapped; kept open while the parent is
            read, keys = handle.get_tensor, handle.keys()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            meta = obj.get("jam_model") if isinstance(obj, dict) and "state_dict" in obj else None
            state = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
            read, keys = state.__getitem__, state.keys()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if meta is None and cfg is None:
        raise CheckpointError(f"{path}: bare state dict without architecture; give the model config")
    if meta is not None and meta.get("kind") != "backbone":
        raise CheckpointError(f"{path}: holds a {meta.get('kind')} model, not a backbone")
    arch = cfg if meta is None else BackboneConfig.from_dict(meta["config"])
    assert arch is not None  # neither metadata nor a config: refused above
    return ParentWeights(arch, read, keys, str(path))


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON): local or URL."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 2**20:
            raise CheckpointError(f"{path}: implausible safetensors header of {n} bytes")
        return json.loads(f.read(n))


def parent_config(path: str) -> BackboneConfig:
    """A parent's architecture without its weights: a Hugging Face directory's config.json, a
    safetensors header's description, or a torch file's description."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        from jamtrain.models.hf import read_config

        return read_config(path)
    if path.endswith(".safetensors"):
        meta = (_safetensors_header(path).get("__metadata__") or {}).get("jam_model")
        if not meta:
            raise CheckpointError(f"{path}: no jam_model description (import it with `jamtrain model import`)")
        meta = json.loads(meta)
    else:
        meta = read_description(path)
    if not meta or meta.get("kind") != "backbone":
        raise CheckpointError(f"{path}: not a backbone checkpoint")
    return BackboneConfig.from_dict(meta["config"])


def with_vocab(cfg: BackboneConfig, vocab_size: int) -> BackboneConfig:
    return replace(cfg, vocab_size=int(vocab_size))

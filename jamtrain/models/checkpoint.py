"""Model weights on disk: safetensors (`.safetensors`) or a torch pickle (anything else).

Both carry the architecture, so `load_model(path)` rebuilds the right class:
- safetensors: metadata key "jam_model" = JSON {"kind": "backbone" | "cross", "config": {...}}
- torch: {"jam_model": {...same...}, "state_dict": {...}}
A bare state dict (no "jam_model") loads when the caller passes the backbone config.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch
from torch import nn

from jamdata.errors import ModelError
from jamtrain.models.backbone import Backbone
from jamtrain.models.config import BackboneConfig, CrossConfig
from jamtrain.models.fusion import JamCross


class CheckpointError(ModelError):
    """A weights file that cannot be read as a jam model."""


def describe(model: nn.Module) -> dict:
    if isinstance(model, JamCross):
        return {"kind": "cross", "config": model.cfg.to_dict()}
    if isinstance(model, Backbone):
        return {"kind": "backbone", "config": model.cfg.to_dict()}
    raise TypeError(f"not a jam model: {type(model).__name__}")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with the header's metadata in sorted key order: the library
    writes it from a hash map whose order changes from call to call, which would make two
    identical models differ in their bytes."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    if len(metadata) < 2:
        return
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text = raw.rstrip(b" ")
        if len(canonical) == len(text):  # the same text reordered; else the file stays as written
            f.seek(8)
            f.write(canonical)


def save_model(model: nn.Module, path: str | Path, info: dict | None = None) -> Path:
    """Write weights + architecture atomically (local paths); the format follows the suffix.
    `info` adds keys to the description (e.g. "hf_config", where an imported model came from)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_state(state, {**describe(model), **(info or {})}, path)


def save_state(state: dict[str, torch.Tensor], meta: dict, path: str | Path) -> Path:
    """Write a state dict with its description ({"kind", "config", ...}) without building the model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:  # write beside the target and rename: a killed job never leaves a complete-looking file
        if path.suffix == ".safetensors":
            save_safetensors(state, tmp, {"jam_model": json.dumps(meta)})
        else:
            torch.save({"jam_model": meta, "state_dict": state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """(description or None, state dict) from either format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = (f.metadata() or {}).get("jam_model")
                state = {k: f.get_tensor(k) for k in f.keys()}
            return (json.loads(meta) if meta else None), state
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: name it
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj.get("jam_model"), obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None, obj
    raise CheckpointError(f"{path}: not a state dict or a jam checkpoint")


def read_description(path: str | Path) -> dict | None:
    """The description alone; for safetensors only the header is read (no tensors)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.exists():
        return read_checkpoint(path)[0]
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get("jam_model")
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    return json.loads(meta) if meta else None


def _load_into(build, state: dict, path) -> nn.Module:
    """`build()` on the meta device, then the read tensors taken as its parameters (cast to the
    module's dtype): no random initialisation and no second copy of the weights."""
    with torch.device("meta"):
        model = build()
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(want[k].shape)]
    if bad:
        raise CheckpointError(
            f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the architecture "
            f"needs {tuple(want[bad[0]].shape)}"
        )
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()}, assign=True)
    return model


def load_model(path: str | Path, backbone_cfg: BackboneConfig | None = None) -> nn.Module:
    """A Backbone or JamCross rebuilt from a file written by `save_model` (or a bare backbone
    state dict plus `backbone_cfg`)."""
    meta, state = read_checkpoint(path)
    if meta is None:
        if backbone_cfg is None:
            raise CheckpointError(f"{path}: bare state dict without architecture; give the model config")
        return _load_into(lambda: Backbone(backbone_cfg), state, path)
    kind = meta.get("kind")
    if kind == "backbone":
        return _load_into(lambda: Backbone(BackboneConfig.from_dict(meta["config"])), state, path)
    if kind == "cross":
        cfg = CrossConfig.from_dict(meta["config"])
        old = state.get("head.weight")
        if "proj.weight" not in state and old is not None and old.shape[-1] == 2 * cfg.backbone.d_model:
            raise CheckpointError(
                f"{path}: a JAM-Cross whose head maps 2d straight to the vocabulary (an "
                "earlier layout, no longer built); fuse it again from its parents"
            )
        return _load_into(lambda: JamCross(cfg), state, path)
    raise CheckpointError(f"{path}: unknown model kind {kind!r}")


def load_backbone(path: str | Path, backbone_cfg: BackboneConfig | None = None) -> Backbone:
    model = load_model(path, backbone_cfg)
    if not isinstance(model, Backbone):
        raise CheckpointError(f"{path}: holds a {describe(model)['kind']} model, not a backbone")
    return model

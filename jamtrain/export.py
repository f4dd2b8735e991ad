"""Weight export (`model.safetensors` + `model.json`) from an engine or a checkpoint, and loading an export back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from jamdata.vocab import JointVocab
from jamtrain import checkpoint as ckpt
from jamtrain.building import (
    SCALAR_ATTR,
    count_params,
    dataset_vocab,
    default_model_factory,
)
from jamtrain.settings import Settings

EXPORT_FORMAT = "jamtrain-export-1"


def export_engine(engine, s: Settings, vocab: JointVocab, out: Path, step: int, rank: int, ckpt_dir: Path) -> None:
    """One safetensors file + model.json; ZeRO-3 shards are gathered from the last checkpoint."""
    if s.zero_stage >= 3:
        if rank == 0:
            export_checkpoint(ckpt_dir / ckpt.tag_for(step), out)
        torch.distributed.barrier()
        return
    if rank == 0:
        write_export(engine.module, s.model.to_dict(), vocab, out, step)
    torch.distributed.barrier()


def _export_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Own, contiguous copies of the weights (DeepSpeed keeps views into flat buffers); tied
    weights are stored once and recorded as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    scalars = {n for n, p in model.named_parameters(remove_duplicate=False) if getattr(p, SCALAR_ATTR, False)}
    for name, t in model.state_dict().items():
        if name in scalars:
            t = t.reshape(())
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[name] = t.detach().to("cpu").clone().contiguous()
    return tensors, aliases


def write_export(model: torch.nn.Module, model_cfg: dict, vocab: JointVocab, out: Path, step: int) -> None:
    from jamdata.io import atomic_write
    from jamtrain.models.checkpoint import save_safetensors

    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _export_tensors(model)
    tmp = out / ".model.safetensors.tmp"
    metadata = {"format": EXPORT_FORMAT, "step": str(step), "aliases": json.dumps(aliases)}
    try:  # the models' own header too, so `train.model.checkpoint: .../model.safetensors` continues from it
        from jamtrain.models.checkpoint import describe

        metadata["jam_model"] = json.dumps(describe(model))
    except (ImportError, TypeError):
        pass
    save_safetensors(tensors, tmp, metadata)
    os.replace(tmp, out / "model.safetensors")
    with atomic_write(out / "model.json", "w") as f:
        json.dump(
            {
                "format": EXPORT_FORMAT,
                "model": model_cfg,
                "vocab_size": vocab.size,
                "vocab": vocab.to_dict(),
                "step": step,
                "params": count_params(model),
                "aliases": aliases,
            },
            f,
            indent=1,
            sort_keys=True,
        )


def load_exported(
    path: str | Path, model_factory: Callable | None = None, device: str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from an export directory (model.json + model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        info = json.loads((path / "model.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no model.json (not an export directory; see `jamtrain export`)") from None
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}/model.json: not a {EXPORT_FORMAT} export")
    model = (model_factory or default_model_factory)(info["model"], info["vocab_size"])
    state = load_file(str(path / "model.safetensors"))
    for name, kept in info.get("aliases", {}).items():
        state[name] = state[kept]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def export_checkpoint(path: Path, out: Path, model_factory: Callable | None = None) -> None:
    """Export a sealed checkpoint (any ZeRO stage) as fp32 safetensors + model.json."""
    problems = ckpt.verify(path)
    if problems:
        raise ckpt.CheckpointError(f"refusing checkpoint {path}: {'; '.join(problems)}")
    ckpt.check_safe(path)  # DeepSpeed's reader below unpickles with weights_only=False
    marker = ckpt.read_marker(path)
    meta = marker["meta"]
    vocab = JointVocab.from_dict(meta["vocab"]) if meta.get("vocab") else dataset_vocab(meta["datasets"])
    model = (model_factory or default_model_factory)(meta["model"], vocab.size)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    want = model.state_dict()
    for name, t in state.items():  # lifted scalars (see lift_scalar_params) go back to shape ()
        if name in want and t.shape != want[name].shape and t.numel() == want[name].numel():
            state[name] = t.reshape(want[name].shape)
    model.load_state_dict(state, strict=True)
    write_export(model, meta["model"], vocab, out, marker["step"])


# -- dry run -----------------------------------------------------------------------------------

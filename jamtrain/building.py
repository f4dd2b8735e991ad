"""Building what the loop trains: the model for the data's joint vocabulary, the loader, parameter groups and the resolved DeepSpeed config."""

from __future__ import annotations

import json

import torch

from jamdata.config import ConfigError
from jamdata.vocab import JointVocab
from jamtrain.models.settings import ModelSettings, model_settings
from jamtrain.settings import Settings


def dataset_vocab(datasets: dict[str, str]) -> JointVocab:
    """The joint vocabulary shared by all datasets (refuses a mix)."""
    from jamdata.manifest import check_compatible, read_manifest

    check_compatible(datasets.values())
    for root in datasets.values():
        m = read_manifest(root)
        if m.get("vocab"):
            return JointVocab.from_dict(m["vocab"])
    raise ConfigError("loader.mixture", "none of the datasets records its joint vocabulary")


def model_for_vocab(model_cfg: ModelSettings | dict, vocab: JointVocab) -> ModelSettings:
    """JAM-Cross takes embedding rows below the image codes from the text parent: pin that split to
    the data's joint vocabulary unless the config sets it."""
    ms = model_settings(model_cfg)
    if ms.fusion == "cross" and ms.text_rows is None:
        return ms.updated(text_rows=vocab.image_offset)
    return ms


def default_model_factory(
    model_cfg: ModelSettings | dict,
    vocab_size: int,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    zero: dict | None = None,
) -> torch.nn.Module:
    """The configured model; a run passes its own device and training dtype, so a model fused from
    parent files is materialised there directly (each rank holds the fused model once, on its
    accelerator, and reads the parents one tensor at a time: host memory per rank stays at about
    one tensor instead of the fp32 model plus both parents). Under ZeRO-3 the run passes its
    DeepSpeed config as `zero`: a fused model is then partitioned over the ranks as it is built
    (`deepspeed.zero.Init`), so no rank holds it whole."""
    from jamtrain.models import build_model

    return build_model(model_cfg, vocab_size, device=device, dtype=dtype, zero=zero)


def run_precision(s: Settings, cpu: bool) -> str:
    """bf16 | fp16 | fp32: `train.precision`, where "auto" is fp32 on CPU and bf16 on GPUs."""
    return s.precision if s.precision != "auto" else ("fp32" if cpu else "bf16")


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def default_loader_factory(s: Settings, rank: int, world: int):
    from jamdata.loader import build_loader

    return build_loader(s.loader_config(world), s.datasets, rank, world)


SCALAR_ATTR = "_jam_was_scalar"


def lift_scalar_params(model: torch.nn.Module) -> list[str]:
    """Give 0-dim parameters (JAM-Cross tanh gates) shape [1]: DeepSpeed's initial broadcast views
    every parameter as bytes, which 0-dim tensors do not allow. Broadcasting keeps the maths the
    same; export restores the original shape."""
    names = []
    for name, p in model.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            setattr(p, SCALAR_ATTR, True)
            names.append(name)
    return names


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, also when ZeRO-3 has partitioned it (its own data is then empty)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases, gates)."""
    decay: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            (decay if len(full_shape(p)) >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def count_params(model: torch.nn.Module) -> int:
    """Parameters of the whole model (a partitioned ZeRO-3 parameter counts its full size)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += int(getattr(p, "ds_numel", p.numel()))
    return n


def resolved_ds_config(s: Settings, cpu: bool) -> dict:
    ds = json.loads(json.dumps(s.deepspeed))
    precision = run_precision(s, cpu)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    ds.pop("train_batch_size", None)  # derived: micro-batch x accumulation x ranks
    return ds

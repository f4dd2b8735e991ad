"""Memory of a training run per GPU and per host, term by term, for `--dry-run`.

Model states follow the ZeRO paper (Rajbhandari et al. 2020) as DeepSpeed implements them, with
the copies its ZeRO-1/2 optimizer really makes (checked against measured peaks of CPU runs in
tests/test_train_memory.py):
- weights: training dtype, all of them on every rank below stage 3;
- grads: training dtype, partitioned from stage 2;
- optimizer: fp32 master copy (DeepSpeed clones it even when training in fp32) + Adam m and v,
  partitioned from stage 1;
- step: what the optimizer step adds for a moment (the flattened fp32 gradient partition and one
  Adam temporary from stage 1; stage 0 flattens all gradients into one all-reduce bucket);
- buffers: DeepSpeed's gradient buckets (stage 2: `reduce_bucket_size` elements, two with
  `overlap_comm`; stage 3 adds the prefetch bucket);
- activations: what autograd keeps for the backward pass, counted tensor by tensor for this
  project's blocks (backbone layer ≈ (9d + 2f or 4f) elements per token, JAM-Cross block ≈ 16d);
  with checkpointing only each layer's and cross block's inputs stay, plus one unit recomputed;
- logits: the [tokens, vocabulary] logits, their fp32 log-softmax and the gradient flowing back.
The sum is an upper bound of the moment the run peaks; allocator fragmentation is not in it."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Arch:
    """What the activation terms depend on: per-stream width d, FFN width f, key/value width,
    layers per stream, streams (2 for JAM-Cross), cross blocks, vocabulary and block kinds."""

    n_layers: int
    d_model: int
    d_ff: int
    kv_dim: int
    vocab: int
    streams: int = 1
    n_cross: int = 0
    swiglu: bool = False
    rmsnorm: bool = False
    rotary: bool = False
    gqa: bool = False


def model_states(n_params: int, zero_stage: int, world: int, elt: int) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer state (`elt`: bytes per weight element)."""
    p = float(n_params)
    w, g = elt * p, elt * p
    o = 12 * p if (elt != 4 or zero_stage >= 1) else 8 * p  # fp32 master (ZeRO clones it) + Adam m, v
    if zero_stage >= 1:
        o /= world
    if zero_stage >= 2:
        g /= world
    if zero_stage >= 3:
        w /= world
    return {"weights": w, "grads": g, "optimizer": o}


def step_bytes(n_params: int, zero_stage: int, world: int, elt: int, ds: dict) -> float:
    """Transient bytes of the optimizer step (module docstring)."""
    p = float(n_params)
    if zero_stage >= 1:
        return 8 * p / world  # flat fp32 gradient partition + one Adam temporary on the flat partition
    bucket = float(ds.get("allreduce_bucket_size", 5e8))
    return elt * min(p, bucket) + (4 * p if elt != 4 else 0.0)  # all-reduce bucket (+ fp32 grads, bf16)


def buffer_bytes(zero_stage: int, elt: int, ds: dict, n_params: int, touched: bool = False) -> float:
    """DeepSpeed's bucket buffers. `touched`: only the pages gradients are written to (what a CPU
    run's resident memory shows; a GPU allocation counts whole)."""
    z = ds.get("zero_optimization", {}) or {}
    out = 0.0
    if zero_stage >= 2 and z.get("contiguous_gradients", True):
        bucket = float(z.get("reduce_bucket_size", 5e8))
        out += (min(bucket, n_params) if touched else bucket) * elt * (2 if z.get("overlap_comm", False) else 1)
    if zero_stage >= 3:
        out += float(z.get("stage3_prefetch_bucket_size", 5e7)) * elt
    return out


def layer_elements(a: Arch, elt: int) -> float:
    """Bytes per token one backbone layer keeps for backward without checkpointing."""
    d, f = a.d_model, a.d_ff
    kv = 2 * (d if a.gqa else a.kv_dim)  # the masked path expands grouped k/v to every head
    # input, norm output, q, k/v, attention output (+ its contiguous copy for o_proj), residual,
    # FFN norm input and output, FFN hidden (up + GELU out, or gate, SiLU, up, product)
    n = elt * (d + d + d + kv + d + d + d + d + d + (4 * f if a.swiglu else 2 * f))
    if elt != 4:
        n += (16 * d if a.rmsnorm else 0) + (4 * (d + a.kv_dim) if a.rotary else 0)  # fp32 copies
    return n


def activation_bytes(
    a: Arch, tokens: int, seq_len: int, micro_batch: int, elt: int, checkpointing: bool
) -> dict[str, float]:
    """Bytes kept for backward for one micro-batch of `tokens` input positions."""
    d = a.d_model
    layer = layer_elements(a, elt)
    cross = 16.0 * d * elt
    mask = float(micro_batch) * seq_len * seq_len * a.streams  # the boolean document mask per stream
    if checkpointing:
        per_token = (
            a.streams * a.n_layers * elt * d + a.n_cross * 2 * elt * d + 2 * max(layer, cross if a.n_cross else 0)
        )
    else:
        per_token = a.streams * a.n_layers * layer + a.n_cross * cross
    # final norms' inputs and outputs (the head's input); JAM-Cross also keeps the 2d -> d
    # projection's output, the input of the shared output embedding
    head = a.streams * 2 * elt * d + (elt * d if a.streams > 1 else 0)
    logits = a.vocab * (elt + (4 if elt != 4 else 0) + 4 + 4)  # logits, fp32 copy, log-softmax, gradient
    return {"activations": tokens * (per_token + head) + mask, "logits": tokens * logits}


def gpu_memory(
    n_params: int,
    arch: Arch | None,
    zero_stage: int,
    world: int,
    micro_batch: int,
    seq_len: int,
    elt: int,
    checkpointing: bool,
    ds: dict,
    cpu: bool = False,
) -> dict[str, float]:
    """Every term per GPU (bytes; per process on `cpu`) and their `total`."""
    out = model_states(n_params, zero_stage, world, elt)
    out["step"] = step_bytes(n_params, zero_stage, world, elt, ds)
    out["buffers"] = buffer_bytes(zero_stage, elt, ds, n_params, touched=cpu)
    if arch is not None:
        out.update(activation_bytes(arch, micro_batch * (seq_len - 1), seq_len, micro_batch, elt, checkpointing))
    else:
        out.update(activations=0.0, logits=0.0)
    out["total"] = sum(out.values())
    return out


def host_memory(
    largest_tensor: int, n_params: int, zero_stage: int, world: int, per_host: int, lazy: bool = True
) -> dict[str, float]:
    """Host RAM (bytes) one rank and one host need beyond the Python/CUDA runtime.

    Building: parents read one tensor at a time (the largest, in fp32, read + cast + grown) when
    they are files (`lazy`); the eager path held the fp32 fused model and both parents. Saving: each
    rank stages its optimizer partition (fp32 master + Adam, 12 bytes per parameter over the
    ranks from stage 1) and rank 0 the bf16 weights too; the host with rank 0 peaks then."""
    build = 3 * 4.0 * largest_tensor if lazy else 4.0 * n_params + 2 * 4.0 * (n_params / 2)
    part = 12.0 * n_params / (world if zero_stage >= 1 else 1)
    rank0 = part + 2.0 * n_params
    return {
        "build_per_rank": build,
        "save_per_rank": part,
        "save_rank0": rank0,
        "per_host": max(per_host * build, (per_host - 1) * part + rank0),
    }


def build_device_bytes(n_params: int, largest_tensor: int, zero_stage: int, world: int, elt: int) -> float:
    """Accelerator bytes per rank while the model is being built. Under ZeRO-3 a fused model is
    built inside `deepspeed.zero.Init` (models/materialize.py): each parameter is partitioned as
    its module is constructed, and filling it gathers one parameter at a time, so a rank holds
    its partition plus the largest tensor. Otherwise every rank holds the whole model in the
    training dtype until DeepSpeed partitions it (stage 3) or keeps it (stages 0-2)."""
    if zero_stage >= 3:
        return elt * (float(n_params) / world + largest_tensor)
    return elt * float(n_params)

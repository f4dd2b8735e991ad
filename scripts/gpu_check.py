"""The checks and figures a first GPU run needs (scripts/gpu_check.sh runs this; < 5 min on one H100/A100):

1. the Triton cross-attention kernel, forward and backward, fp16 and bf16, at the GPU tile sizes,
   against the fp32 PyTorch reference (with document segments and padding);
2. document-masked self-attention (FlexAttention compiled, and per-document SDPA) against the dense
   reference, forward and backward, bf16;
3. kernel TFLOP/s against PyTorch's flash SDPA at JAM shapes (benchmarks/bench_kernel.py);
4. one bf16 DeepSpeed (ZeRO-2) training step of a small JAM-Cross: finite loss, tokens/s;
5. VQ-VAE encode images/s (jamdata/image/vqvae.py, the 256px-f8 geometry; `--vqvae DIR` loads a
   trained one).

Prints one summary table; exits 1 when any check fails. `--device cpu --small` runs the same code
paths that need no CUDA at tiny sizes (tests/test_gpu_check.py); rows that need CUDA say "skipped".
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import torch  # noqa: E402

TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 1e-4}  # max |err| / max |ref|


@dataclass
class Row:
    check: str
    value: str
    ok: bool | None  # None: a figure or a skipped check, not pass/fail


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))


def segments(B: int, L: int, device) -> torch.Tensor:
    """Packed rows: documents of varied lengths, then padding (-1) at the end of row 0."""
    seg = torch.zeros(B, L, dtype=torch.int32, device=device)
    for b in range(B):
        cuts = sorted({L // 3 + 17 * b, L // 2, (3 * L) // 4})
        for i, c in enumerate(cuts):
            seg[b, c:] = i + 1
    seg[0, L - L // 8 :] = -1
    return seg


def _fwd_bwd(fn, xs, grad_out):
    xs = [x.detach().requires_grad_(True) for x in xs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [grad_out.to(o.dtype).expand_as(o) for o in outs])
    return [o.detach() for o in outs], [x.grad for x in xs]


def compare(name: str, fn, ref_fn, xs, dtype) -> Row:
    """fn on inputs cast to `dtype` vs ref_fn in fp32: outputs and input gradients."""
    g = torch.randn_like(xs[0][..., :1, :]).float()
    o_ref, g_ref = _fwd_bwd(ref_fn, [x.float() for x in xs], g)
    o, gr = _fwd_bwd(fn, [x.to(dtype) for x in xs], g)
    err = max([rel_err(a, b) for a, b in zip(o, o_ref)] + [rel_err(a, b) for a, b in zip(gr, g_ref)])
    return Row(name, f"rel err {err:.1e} (limit {TOL[dtype]:.0e})", err <= TOL[dtype])


def kernel_rows(device, small: bool) -> list[Row]:
    from jamtrain.kernels.cross_attention import bidirectional_cross_attention, reference_bidirectional_cross_attention

    if device.type != "cuda":
        return [Row("triton cross-attention fwd+bwd", "skipped (no CUDA)", None)]
    rows = []
    for D, L in ((64, 1000), (128, 2048)):  # tile sizes differ with head_dim; L not a tile multiple
        torch.manual_seed(0)
        xs = [torch.randn(2, 4, L, D, device=device) for _ in range(6)]
        seg = segments(2, L, device)
        for dtype in (torch.float16, torch.bfloat16):
            rows.append(
                compare(
                    f"triton cross-attn D={D} L={L} {str(dtype)[6:]}",
                    lambda *x: bidirectional_cross_attention(*x, seg, seg, impl="triton"),
                    lambda *x: reference_bidirectional_cross_attention(*x, seg, seg),
                    xs,
                    dtype,
                )
            )
    return rows


def self_attention_rows(device, small: bool) -> list[Row]:
    from jamtrain.kernels.self_attention import dense_attention, document_attention

    L = 256 if small else 2048
    torch.manual_seed(0)
    xs = [
        torch.randn(2, 8, L, 64, device=device),
        torch.randn(2, 2, L, 64, device=device),
        torch.randn(2, 2, L, 64, device=device),
    ]
    seg = segments(2, L, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [
        compare(
            f"self-attn segments GQA L={L} {str(dtype)[6:]}",
            lambda q, k, v: document_attention(q, k, v, seg, "segments"),
            lambda q, k, v: dense_attention(q, k, v, seg),
            xs,
            dtype,
        )
    ]
    if device.type == "cuda":
        rows.append(
            compare(
                f"self-attn flex (compiled) GQA L={L} bf16",
                lambda q, k, v: document_attention(q, k, v, seg, "flex"),
                lambda q, k, v: dense_attention(q, k, v, seg),
                xs,
                torch.bfloat16,
            )
        )
    else:
        rows.append(Row("self-attn flex (compiled) fwd+bwd", "skipped (no CUDA)", None))
    return rows


def bench_rows(device, small: bool) -> list[Row]:
    if device.type != "cuda":
        return [Row("kernel TFLOP/s vs flash SDPA", "skipped (no CUDA)", None)]
    from bench_kernel import measure

    rows = []
    for L, H, D in ((4096, 32, 128), (2048, 16, 128)):  # JAM-7B heads; a smaller shape
        err, res = measure(2, L, H, D, "bf16")
        tri, sd = res["triton (fused, 1 launch)"], res["torch SDPA (2 calls)"]
        rows.append(
            Row(
                f"cross-attn L={L} H={H} D={D} bf16 fwd+bwd TFLOP/s",
                f"triton {tri[1]:.0f} | SDPA {sd[1]:.0f} | ratio {tri[1] / sd[1]:.2f}x",
                None,
            )
        )
        rows.append(Row(f"cross-attn L={L} bench slice error", f"{err:.1e}", err < 5e-2))
    return rows


def deepspeed_row(device, small: bool) -> list[Row]:
    from jamtrain.distributed import process_group

    with process_group():  # joined for the check and left after it
        return _deepspeed_steps(device, small)


def _deepspeed_steps(device, small: bool) -> list[Row]:
    import deepspeed

    from jamtrain.building import lift_scalar_params
    from jamtrain.models import build_model

    V, L, B = 1000, (128 if small else 2048), 2
    cfg = {
        "preset": "tiny",
        "fusion": "cross",
        "n_layers": 2 if small else 4,
        "d_model": 64 if small else 512,
        "n_heads": 4 if small else 8,
        "max_seq_len": L,
        "text_rows": V - 64,
        "activation_checkpointing": True,
    }
    torch.manual_seed(0)
    model = build_model(cfg, V)
    lift_scalar_params(model)
    bf16 = device.type == "cuda"
    ds = {
        "train_micro_batch_size_per_gpu": B,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    tokens = torch.randint(0, V, (B, L + 1), device=engine.device)
    seg = segments(B, L + 1, engine.device)
    losses, times = [], []
    for _ in range(3):
        t0 = time.time()
        logits = engine(tokens[:, :-1], segment_ids=seg[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        losses.append(float(loss.detach()))
        times.append(time.time() - t0)
    finite = all(torch.isfinite(torch.tensor(losses)))
    tps = B * L / min(times[1:])
    label = f"DeepSpeed ZeRO-2 {'bf16' if bf16 else 'fp32'} JAM-Cross step ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)"
    return [Row(label, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {tps:,.0f} tokens/s", finite)]


def vq_row(device, small: bool, vqvae: str | None) -> list[Row]:
    from jamdata.image.vqvae import build_vqvae, load_vqvae

    model = load_vqvae(vqvae) if vqvae else build_vqvae("tiny-64px-f4" if small else "256px-f8")
    model = model.to(device).eval()
    n, res = (4, model.resolution) if small else (32, model.resolution)
    x = torch.rand(n, 3, res, res, device=device) * 2 - 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        codes = model.encode(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, reps = time.time(), 1 if small else 5
        for _ in range(reps):
            codes = model.encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    ips = n * reps / (time.time() - t0)
    ok = codes.shape == (n, *model.grid()) and int(codes.max()) < model.n_embed
    return [
        Row(
            f"VQ-VAE encode {res}px -> {model.grid()[0]}x{model.grid()[1]} ({str(dtype)[6:]})",
            f"{ips:,.1f} images/s",
            ok,
        )
    ]


def table(rows: list[Row]) -> str:
    w = max(len(r.check) for r in rows)
    mark = {True: "ok", False: "FAIL", None: "-"}
    lines = [f"{'check':{w}s}  {'result':4s}  value", "-" * (w + 60)]
    lines += [f"{r.check:{w}s}  {mark[r.ok]:4s}  {r.value}" for r in rows]
    return "\n".join(lines)


def run_checks(device: torch.device, small: bool, vqvae: str | None = None) -> list[Row]:
    rows: list[Row] = []
    for part in (kernel_rows, self_attention_rows, bench_rows, deepspeed_row):
        try:
            rows += part(device, small)
        except Exception as e:  # one broken part must not hide the others' figures
            rows.append(Row(part.__name__, f"error: {type(e).__name__}: {str(e)[:200]}", False))
    try:
        rows += vq_row(device, small, vqvae)
    except Exception as e:
        rows.append(Row("vq_row", f"error: {type(e).__name__}: {str(e)[:200]}", False))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny sizes (the CPU self-test)")
    ap.add_argument("--vqvae", help="a trained VQ-VAE directory to time instead of a random 256px-f8")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    t0 = time.time()
    rows = run_checks(device, args.small, args.vqvae)
    print(f"\ngpu_check on {name}, torch {torch.__version__}, {time.time() - t0:.0f} s\n" + table(rows))
    failed = [r.check for r in rows if r.ok is False]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Bidirectional causal cross-attention at JAM shapes: the fused Triton kernel (both directions in
one launch) vs PyTorch SDPA and FlashAttention-2 (two calls, one per direction).

    python benchmarks/bench_kernel.py [--batch 2] [--seq 4096] [--heads 32] [--dim 128] [--dtype bf16]

Prints forward and forward+backward TFLOP/s and the ratios. Without a CUDA GPU it says so and exits 0.
FLOPs per direction (causal): forward 2 * 2 * B*H*L^2*D / 2, backward 2.5x forward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def timed(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds per call (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(B: int, L: int, H: int, D: int, dtype_name: str = "bf16") -> tuple[float, dict]:
    """(max |triton - fp32 reference| on a slice, {implementation: (fwd TFLOP/s, fwd+bwd TFLOP/s,
    fwd ms, fwd+bwd ms)}) on the current CUDA device; used by scripts/gpu_check.py too."""
    from jamtrain.kernels.cross_attention import reference_bidirectional_cross_attention
    from jamtrain.kernels.triton_cross_attention import triton_bidirectional_cross_attention

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    xs = [torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(6)]
    fwd_flops = 2 * (4 * B * H * L * L * D / 2)  # two directions, causal
    bwd_flops = 2.5 * fwd_flops

    def sdpa(qa, ka, va, qb, kb, vb):
        return (
            F.scaled_dot_product_attention(qa, kb, vb, is_causal=True),
            F.scaled_dot_product_attention(qb, ka, va, is_causal=True),
        )

    impls = {
        "triton (fused, 1 launch)": lambda *x: triton_bidirectional_cross_attention(*x),
        "torch SDPA (2 calls)": sdpa,
    }
    try:
        from flash_attn import flash_attn_func

        def fa2(qa, ka, va, qb, kb, vb):
            t = lambda x: x.transpose(1, 2)  # flash-attn layout [B, L, H, D]
            return (
                flash_attn_func(t(qa), t(kb), t(vb), causal=True).transpose(1, 2),
                flash_attn_func(t(qb), t(ka), t(va), causal=True).transpose(1, 2),
            )

        impls["flash-attn 2 (2 calls)"] = fa2
    except ImportError:
        pass  # flash-attn not installed: SDPA only

    # correctness at the benchmark shape (small batch slice) before timing
    with torch.no_grad():
        small = [x[:1, :2, :1024].detach() for x in xs]
        ref = reference_bidirectional_cross_attention(*[s.float() for s in small])
        got = triton_bidirectional_cross_attention(*small)
        err = max((g.float() - r).abs().max().item() for g, r in zip(got, ref))

    grads = [torch.randn(B, H, L, D, device="cuda", dtype=dtype) for _ in range(2)]
    results = {}
    for name, fn in impls.items():
        fwd_ms = timed(lambda: fn(*xs))

        def step():
            oa, ob = fn(*xs)
            torch.autograd.backward((oa, ob), grads)

        fb_ms = timed(step)
        results[name] = (fwd_flops / fwd_ms / 1e9, (fwd_flops + bwd_flops) / fb_ms / 1e9, fwd_ms, fb_ms)

    return err, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="bf16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernel: no CUDA GPU on this machine; the Triton kernel benchmark needs one (skipped).")
        return 0
    B, L, H, D = args.batch, args.seq, args.heads, args.dim
    err, results = measure(B, L, H, D, args.dtype)
    print(f"max |triton - reference| on a 1x2x1024 slice: {err:.2e}")
    print(
        f"\nbidirectional causal cross-attention, B={B} L={L} H={H} D={D} {args.dtype} on "
        f"{torch.cuda.get_device_name()}"
    )
    print(f"{'implementation':28s} {'fwd ms':>8s} {'fwd TFLOP/s':>12s} {'fwd+bwd ms':>11s} {'fwd+bwd TFLOP/s':>16s}")
    for name, (f_tf, fb_tf, f_ms, fb_ms) in results.items():
        print(f"{name:28s} {f_ms:8.2f} {f_tf:12.1f} {fb_ms:11.2f} {fb_tf:16.1f}")
    base = results["triton (fused, 1 launch)"]
    for name, r in results.items():
        if not name.startswith("triton"):
            print(f"ratio triton / {name}: forward {base[0] / r[0]:.2f}x, forward+backward {base[1] / r[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

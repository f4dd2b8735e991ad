"""Fused bidirectional causal cross-attention in Triton (flash-attention style).

One launch computes both directions of a JAM-Cross block:
    out_a = softmax(q_a k_b^T * scale + mask_ab) v_b      (stream A reads stream B)
    out_b = softmax(q_b k_a^T * scale + mask_ba) v_a      (stream B reads stream A)
Grid axis 2 selects the direction. Tiles are streamed through an online softmax, so the
attention matrix is never materialised; the per-row log-sum-exp is saved for the backward pass.

Mask semantics (identical to `cross_attention.reference_cross_attention`): query i may see key j iff
    j < Lk  and  (not causal or j <= i)  and  seg_k[j] >= 0  and  seg_q[i] == seg_k[j].
A query row with no visible key (padding, or a document absent from the other stream) outputs
zeros and receives zero gradient; its LSE is -inf.

Tensors are [B, H, L, D] and are made contiguous by the wrapper; accumulation is fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _select(d, a, b):
    # Scalar choice between two values/pointers by direction (0 -> a, 1 -> b).
    if d == 0:
        r = a
    else:
        r = b
    return r


@triton.jit(do_not_specialize=["H", "LA", "LB"])  # L == 1 must not become a constexpr
def _fwd_kernel(
    QA,
    KA,
    VA,
    QB,
    KB,
    VB,
    OA,
    OB,
    LSEA,
    LSEB,
    SEGA,
    SEGB,
    H,
    LA,
    LB,
    D,
    scale_log2,
    CAUSAL: tl.constexpr,
    HAS_SEG: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    d = tl.program_id(2)
    b = bh // H
    # direction 0: queries of A against keys/values of B; direction 1: the reverse.
    Q = _select(d, QA, QB)
    K = _select(d, KB, KA)
    V = _select(d, VB, VA)
    O = _select(d, OA, OB)
    LSE = _select(d, LSEA, LSEB)
    SQ = _select(d, SEGA, SEGB)
    SK = _select(d, SEGB, SEGA)
    Lq = _select(d, LA, LB)
    Lk = _select(d, LB, LA)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < Lq
    d_valid = offs_d < D
    q_base = Q + bh.to(tl.int64) * Lq * D
    k_base = K + bh.to(tl.int64) * Lk * D
    v_base = V + bh.to(tl.int64) * Lk * D

    q = tl.load(q_base + offs_m[:, None] * D + offs_d[None, :], mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    if HAS_SEG:
        sq = tl.load(SQ + b * Lq + offs_m, mask=m_valid, other=-1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        n_valid = cols < Lk
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale_log2
        allowed = m_valid[:, None] & n_valid[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= offs_m[:, None])
        if HAS_SEG:
            sk = tl.load(SK + b * Lk + cols, mask=n_valid, other=-1)
            allowed = allowed & (sq[:, None] == sk[None, :]) & (sk[None, :] >= 0)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has_any = l_i > 0.0
    l_safe = tl.where(has_any, l_i, 1.0)
    out = tl.where(has_any[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(has_any, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    o_base = O + bh.to(tl.int64) * Lq * D
    tl.store(
        o_base + offs_m[:, None] * D + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=m_valid[:, None] & d_valid[None, :],
    )
    tl.store(LSE + bh.to(tl.int64) * Lq + offs_m, lse, mask=m_valid)


@triton.jit(do_not_specialize=["H", "LA", "LB"])  # L == 1 must not become a constexpr
def _bwd_dkdv_kernel(
    QA,
    KA,
    VA,
    QB,
    KB,
    VB,
    DOA,
    DOB,
    LSEA,
    LSEB,
    DELTAA,
    DELTAB,
    SEGA,
    SEGB,
    DKA,
    DVA,
    DKB,
    DVB,
    H,
    LA,
    LB,
    D,
    scale,
    scale_log2,
    CAUSAL: tl.constexpr,
    HAS_SEG: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program owns one key block of one direction and sweeps the query blocks that can see it.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    d = tl.program_id(2)
    b = bh // H
    Q = _select(d, QA, QB)
    K = _select(d, KB, KA)
    V = _select(d, VB, VA)
    DO = _select(d, DOA, DOB)
    LSE = _select(d, LSEA, LSEB)
    DELTA = _select(d, DELTAA, DELTAB)
    SQ = _select(d, SEGA, SEGB)
    SK = _select(d, SEGB, SEGA)
    DK = _select(d, DKB, DKA)
    DV = _select(d, DVB, DVA)
    Lq = _select(d, LA, LB)
    Lk = _select(d, LB, LA)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = offs_n < Lk
    d_valid = offs_d < D
    kv_mask = n_valid[:, None] & d_valid[None, :]
    k_base = K + bh.to(tl.int64) * Lk * D
    v_base = V + bh.to(tl.int64) * Lk * D
    q_base = Q + bh.to(tl.int64) * Lq * D
    do_base = DO + bh.to(tl.int64) * Lq * D
    k = tl.load(k_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    if HAS_SEG:
        sk = tl.load(SK + b * Lk + offs_n, mask=n_valid, other=-1)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = pid_n * BLOCK_N
    for start_m in range(lo, Lq, BLOCK_M):
        rows = start_m + offs_m0
        m_valid = rows < Lq
        qd_mask = m_valid[:, None] & d_valid[None, :]
        q = tl.load(q_base + rows[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
        do = tl.load(do_base + rows[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * Lq + rows, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * Lq + rows, mask=m_valid, other=0.0)
        # s^T: [BLOCK_N, BLOCK_M]
        if IEEE:
            st = tl.dot(k, tl.trans(q), input_precision="ieee")
        else:
            st = tl.dot(k, tl.trans(q))
        allowed = n_valid[:, None] & m_valid[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[:, None] <= rows[None, :])
        if HAS_SEG:
            sq = tl.load(SQ + b * Lq + rows, mask=m_valid, other=-1)
            allowed = allowed & (sq[None, :] == sk[:, None]) & (sk[:, None] >= 0)
        pt = tl.where(allowed, tl.exp2(st * scale_log2 - lse[None, :] * 1.4426950408889634), 0.0)
        if IEEE:
            dv += tl.dot(pt.to(do.dtype), do, input_precision="ieee")
            dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
        else:
            dv += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        if IEEE:
            dk += tl.dot(dst.to(q.dtype), q, input_precision="ieee")
        else:
            dk += tl.dot(dst.to(q.dtype), q)
    dk = dk * scale
    dk_base = DK + bh.to(tl.int64) * Lk * D
    dv_base = DV + bh.to(tl.int64) * Lk * D
    tl.store(dk_base + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_base + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=["H", "LA", "LB"])  # L == 1 must not become a constexpr
def _bwd_dq_kernel(
    QA,
    KA,
    VA,
    QB,
    KB,
    VB,
    DOA,
    DOB,
    LSEA,
    LSEB,
    DELTAA,
    DELTAB,
    SEGA,
    SEGB,
    DQA,
    DQB,
    H,
    LA,
    LB,
    D,
    scale,
    scale_log2,
    CAUSAL: tl.constexpr,
    HAS_SEG: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    d = tl.program_id(2)
    b = bh // H
    Q = _select(d, QA, QB)
    K = _select(d, KB, KA)
    V = _select(d, VB, VA)
    DO = _select(d, DOA, DOB)
    LSE = _select(d, LSEA, LSEB)
    DELTA = _select(d, DELTAA, DELTAB)
    SQ = _select(d, SEGA, SEGB)
    SK = _select(d, SEGB, SEGA)
    DQ = _select(d, DQA, DQB)
    Lq = _select(d, LA, LB)
    Lk = _select(d, LB, LA)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < Lq
    d_valid = offs_d < D
    qd_mask = m_valid[:, None] & d_valid[None, :]
    q_base = Q + bh.to(tl.int64) * Lq * D
    do_base = DO + bh.to(tl.int64) * Lq * D
    k_base = K + bh.to(tl.int64) * Lk * D
    v_base = V + bh.to(tl.int64) * Lk * D
    q = tl.load(q_base + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Lq + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * Lq + offs_m, mask=m_valid, other=0.0)
    if HAS_SEG:
        sq = tl.load(SQ + b * Lq + offs_m, mask=m_valid, other=-1)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n0
        n_valid = cols < Lk
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
            dp = tl.dot(do, tl.trans(v))
        allowed = m_valid[:, None] & n_valid[None, :]
        if CAUSAL:
            allowed = allowed & (cols[None, :] <= offs_m[:, None])
        if HAS_SEG:
            sk = tl.load(SK + b * Lk + cols, mask=n_valid, other=-1)
            allowed = allowed & (sq[:, None] == sk[None, :]) & (sk[None, :] >= 0)
        p = tl.where(allowed, tl.exp2(s * scale_log2 - lse[:, None] * 1.4426950408889634), 0.0)
        ds = p * (dp - delta[:, None])
        if IEEE:
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * scale
    dq_base = DQ + bh.to(tl.int64) * Lq * D
    tl.store(dq_base + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=qd_mask)


def _launch_cfg(D: int, device: torch.device, dtype: torch.dtype, block_m: int | None, block_n: int | None) -> dict:
    """Tile sizes: small tiles for the CPU interpreter, flash-attention-2 style tiles on GPUs."""
    if device.type != "cuda":
        return {"fwd": (block_m or 16, block_n or 16, 1, 1), "bwd": (block_m or 16, block_n or 16, 1, 1)}
    if dtype == torch.float32:  # twice the bytes per tile: keep shared memory within A100 limits
        return {"fwd": (block_m or 64, block_n or 32, 4, 2), "bwd": (block_m or 32, block_n or 32, 4, 2)}
    if D <= 64:
        fwd = (block_m or 128, block_n or 64, 4, 3)
    else:
        fwd = (block_m or 128, block_n or 64, 8, 2)
    bwd = (block_m or 64, block_n or 64, 8 if D > 64 else 4, 2)
    return {"fwd": fwd, "bwd": bwd}


class _BiCrossAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qa, ka, va, qb, kb, vb, seg_a, seg_b, causal, scale, block_m, block_n):
        qa, ka, va, qb, kb, vb = (t.contiguous() for t in (qa, ka, va, qb, kb, vb))
        B, H, LA, D = qa.shape
        LB = qb.shape[2]
        has_seg = seg_a is not None
        if has_seg:
            seg_a = seg_a.to(torch.int32).contiguous()
            seg_b = seg_b.to(torch.int32).contiguous()
        else:
            seg_a = seg_b = torch.empty(1, dtype=torch.int32, device=qa.device)
        oa, ob = torch.empty_like(qa), torch.empty_like(qb)
        lse_a = torch.empty(B, H, LA, dtype=torch.float32, device=qa.device)
        lse_b = torch.empty(B, H, LB, dtype=torch.float32, device=qa.device)
        cfg = _launch_cfg(D, qa.device, qa.dtype, block_m, block_n)
        bm, bn, warps, stages = cfg["fwd"]
        block_d = max(16, triton.next_power_of_2(D))
        ieee = qa.dtype == torch.float32
        grid = (triton.cdiv(max(LA, LB), bm), B * H, 2)
        _fwd_kernel[grid](
            qa,
            ka,
            va,
            qb,
            kb,
            vb,
            oa,
            ob,
            lse_a,
            lse_b,
            seg_a,
            seg_b,
            H,
            LA,
            LB,
            D,
            scale * LOG2E,
            CAUSAL=causal,
            HAS_SEG=has_seg,
            IEEE=ieee,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_D=block_d,
            num_warps=warps,
            num_stages=stages,
        )
        ctx.save_for_backward(qa, ka, va, qb, kb, vb, oa, ob, lse_a, lse_b, seg_a, seg_b)
        ctx.mark_non_differentiable(lse_a, lse_b)
        ctx.meta = (causal, scale, has_seg, block_m, block_n)
        return oa, ob, lse_a, lse_b

    @staticmethod
    def backward(ctx, doa, dob, _dlse_a, _dlse_b):
        qa, ka, va, qb, kb, vb, oa, ob, lse_a, lse_b, seg_a, seg_b = ctx.saved_tensors
        causal, scale, has_seg, block_m, block_n = ctx.meta
        B, H, LA, D = qa.shape
        LB = qb.shape[2]
        doa = torch.zeros_like(oa) if doa is None else doa.contiguous()
        dob = torch.zeros_like(ob) if dob is None else dob.contiguous()
        delta_a = (doa.float() * oa.float()).sum(-1).contiguous()
        delta_b = (dob.float() * ob.float()).sum(-1).contiguous()
        dqa, dka, dva = torch.empty_like(qa), torch.empty_like(ka), torch.empty_like(va)
        dqb, dkb, dvb = torch.empty_like(qb), torch.empty_like(kb), torch.empty_like(vb)
        bm, bn, warps, stages = _launch_cfg(D, qa.device, qa.dtype, block_m, block_n)["bwd"]
        block_d = max(16, triton.next_power_of_2(D))
        ieee = qa.dtype == torch.float32
        common = dict(
            CAUSAL=causal,
            HAS_SEG=has_seg,
            IEEE=ieee,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_D=block_d,
            num_warps=warps,
            num_stages=stages,
        )
        args = (qa, ka, va, qb, kb, vb, doa, dob, lse_a, lse_b, delta_a, delta_b, seg_a, seg_b)
        _bwd_dkdv_kernel[(triton.cdiv(max(LA, LB), bn), B * H, 2)](
            *args, dka, dva, dkb, dvb, H, LA, LB, D, scale, scale * LOG2E, **common
        )
        _bwd_dq_kernel[(triton.cdiv(max(LA, LB), bm), B * H, 2)](
            *args, dqa, dqb, H, LA, LB, D, scale, scale * LOG2E, **common
        )
        return dqa, dka, dva, dqb, dkb, dvb, None, None, None, None, None, None


def triton_bidirectional_cross_attention(
    qa,
    ka,
    va,
    qb,
    kb,
    vb,
    seg_a=None,
    seg_b=None,
    causal=True,
    scale=None,
    block_m=None,
    block_n=None,
    return_lse=False,
):
    """Both directions in one launch; see the module docstring for the semantics."""
    D = qa.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    oa, ob, lse_a, lse_b = _BiCrossAttention.apply(
        qa, ka, va, qb, kb, vb, seg_a, seg_b, bool(causal), scale, block_m, block_n
    )
    if return_lse:
        return oa, ob, lse_a, lse_b
    return oa, ob

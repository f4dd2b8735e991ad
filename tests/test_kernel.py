"""The bidirectional causal cross-attention: reference semantics, gradients, dispatch, and the
Triton kernel against the reference under the Triton CPU interpreter (in a subprocess, so
TRITON_INTERPRET never leaks into other tests of the same worker)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jamtrain.kernels.cross_attention import (
    ENV_VAR,
    bidirectional_cross_attention,
    reference_bidirectional_cross_attention,
    reference_cross_attention,
    reference_lse,
    resolve_impl,
)

REPO = Path(__file__).resolve().parent.parent


def naive(q, k, v, seg_q=None, seg_k=None, causal=True):
    """Loop-level definition of the semantics: query i sees key j iff j <= i (causal), same
    document, key not padding; no visible key -> zeros."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for i in range(Lq):
            keys = [
                j
                for j in range(Lk)
                if (not causal or j <= i) and (seg_q is None or (seg_k[b, j] >= 0 and seg_q[b, i] == seg_k[b, j]))
            ]
            if not keys:
                continue
            s = torch.einsum("hd,hnd->hn", q[b, :, i], k[b, :, keys]) / math.sqrt(D)
            out[b, :, i] = torch.einsum("hn,hnd->hd", torch.softmax(s, -1), v[b, :, keys])
    return out


def segs():
    # stream A: docs 0,1,2 then padding; stream B: docs 0,1 then padding (doc 2 absent -> empty rows)
    sa = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, -1], [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    sb = torch.tensor([[0, 0, 1, 1, 1, -1, -1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    return sa, sb


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_reference_matches_definition(causal, masked):
    torch.manual_seed(0)
    sa, sb = segs() if masked else (None, None)
    qa, ka, va = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    qb, kb, vb = (torch.randn(2, 3, 7, 8, dtype=torch.float64) for _ in range(3))
    oa, ob = reference_bidirectional_cross_attention(qa, ka, va, qb, kb, vb, sa, sb, causal)
    torch.testing.assert_close(oa, naive(qa, kb, vb, sa, sb, causal), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ob, naive(qb, ka, va, sb, sa, causal), atol=1e-12, rtol=1e-10)


def test_fully_masked_rows_are_zero_with_finite_gradients():
    torch.manual_seed(0)
    sa, sb = segs()
    qa, ka, va = (torch.randn(2, 3, 9, 8, requires_grad=True) for _ in range(3))
    qb, kb, vb = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    oa, ob = bidirectional_cross_attention(qa, ka, va, qb, kb, vb, sa, sb)
    # A rows 6,7 (doc 2, absent from B) and 8 (padding) see nothing; B rows 5,6 are padding
    assert torch.equal(oa[0, :, 6:], torch.zeros_like(oa[0, :, 6:]))
    assert torch.equal(ob[0, :, 5:], torch.zeros_like(ob[0, :, 5:]))
    assert oa[0, :, :6].abs().sum() > 0 and ob[0, :, :5].abs().sum() > 0
    (oa.square().sum() + ob.sum()).backward()
    for t in (qa, ka, va, qb, kb, vb):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(qa.grad[0, :, 6:], torch.zeros_like(qa.grad[0, :, 6:]))
    # padding keys of B (positions 5, 6) never receive gradient
    assert torch.equal(kb.grad[0, :, 5:], torch.zeros_like(kb.grad[0, :, 5:]))
    lse = reference_lse(qa, kb, sa, sb)
    assert torch.isinf(lse[0, :, 6:]).all() and torch.isfinite(lse[0, :, :6]).all()


def test_gradcheck_fp64():
    torch.manual_seed(0)
    sa = torch.tensor([[0, 0, 1, 1, 2, -1]], dtype=torch.int32)
    sb = torch.tensor([[0, 1, 1, -1, 1]], dtype=torch.int32)
    ins = [torch.randn(1, 1, L, 4, dtype=torch.float64, requires_grad=True) for L in (6, 6, 6, 5, 5, 5)]

    def f(*xs):
        return reference_bidirectional_cross_attention(*xs, sa, sb, True)

    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda *xs: reference_bidirectional_cross_attention(*xs, causal=False), ins)


def test_cross_attention_is_causal_across_streams():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 10, 8)
    k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 5.0
    v2[:, :, 6:] -= 3.0
    o1, o2 = reference_cross_attention(q, k, v), reference_cross_attention(q, k2, v2)
    assert torch.equal(o1[:, :, :6], o2[:, :, :6])
    assert not torch.allclose(o1[:, :, 6:], o2[:, :, 6:])


def test_dispatch(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    assert resolve_impl(None, cpu, torch.float32, 64) == "reference"
    has_triton = importlib.util.find_spec("triton") is not None
    assert resolve_impl(None, torch.device("cuda"), torch.bfloat16, 128) == ("triton" if has_triton else "reference")
    assert resolve_impl(None, torch.device("cuda"), torch.bfloat16, 512) == "reference"
    assert resolve_impl("reference", torch.device("cuda"), torch.float16, 128) == "reference"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_impl(None, torch.device("cuda"), torch.float16, 128) == "reference"
    assert resolve_impl("triton", cpu, torch.float16, 128) == "triton"  # the argument wins
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_impl(None, cpu, torch.float32, 64)
    with pytest.raises(ValueError, match="segment ids"):
        x = torch.randn(1, 1, 4, 8)
        bidirectional_cross_attention(x, x, x, x, x, x, torch.zeros(1, 4), None, impl="reference")


# --------------------------------------------------------------------- Triton, CPU interpreter
INTERPRETER_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from jamtrain.kernels.triton_cross_attention import triton_bidirectional_cross_attention as tri
    from jamtrain.kernels.cross_attention import reference_bidirectional_cross_attention as ref, reference_lse

    def run(name, dtype, LA, LB, D, seg, causal, H=2, B=2):
        g = torch.Generator().manual_seed(len(name))
        mk = lambda L: torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_()
        xs = [mk(LA), mk(LA), mk(LA), mk(LB), mk(LB), mk(LB)]
        sa = sb = None
        if seg:
            sa = torch.zeros(B, LA, dtype=torch.int32); sa[0, LA // 3:] = 1; sa[0, LA - 6:] = 2; sa[0, LA - 2:] = -1
            sb = torch.zeros(B, LB, dtype=torch.int32); sb[0, LB // 4:] = 1; sb[0, LB - 3:] = -1
            sb[1, :] = 5                      # row 1: A has no document 5 -> every A row of batch 1 empty
        oa, ob, la, lb = tri(*xs, sa, sb, causal, block_m=16, block_n=16, return_lse=True)
        gs = [torch.randn(oa.shape, generator=g).to(dtype), torch.randn(ob.shape, generator=g).to(dtype)]
        grads = torch.autograd.grad((oa, ob), xs, gs)
        rx = [x.detach().double().requires_grad_() for x in xs]
        ra, rb = ref(*rx, sa, sb, causal)
        rgrads = torch.autograd.grad((ra, rb), rx, [t.double() for t in gs])
        rla = reference_lse(rx[0], rx[4], sa, sb, causal)
        def err(a, b):
            return ((a.double() - b).abs() / (1 + b.abs())).max().item()
        names = ["out_a", "out_b", "dqa", "dka", "dva", "dqb", "dkb", "dvb"]
        errors = dict(zip(names, [err(oa, ra), err(ob, rb)] + [err(a, b) for a, b in zip(grads, rgrads)]))
        finite = torch.isfinite(rla)
        errors["lse_a"] = err(la[finite], rla[finite])
        res = {"name": name, "errors": errors,
               "nan": any(bool(torch.isnan(t).any()) for t in (oa, ob, *grads)),
               "lse_inf_matches": bool(torch.equal(torch.isinf(la), torch.isinf(rla)))}
        if seg:
            res["empty_rows_zero"] = bool((oa[1] == 0).all()) and bool((grads[0][1] == 0).all())
        return res

    cases = json.loads(sys.argv[1])
    print(json.dumps([run(c[0], getattr(torch, c[1]), *c[2:]) for c in cases]))
""")

# name, dtype, La, Lb, head_dim, segments, causal
CASES = [
    ("fp32-seg-odd", "float32", 37, 21, 16, True, True),
    ("fp32-plain-lq>lk", "float32", 33, 17, 16, False, True),
    ("fp32-noncausal-lq<lk", "float32", 19, 35, 16, False, False),
    ("fp32-headdim24", "float32", 23, 23, 24, True, True),
    ("fp32-length1", "float32", 1, 5, 16, False, True),
    ("fp16-seg-odd", "float16", 37, 21, 16, True, True),
    ("fp16-plain", "float16", 31, 31, 32, False, True),
]
TOL = {"float32": 1e-5, "float16": 2e-3}


@pytest.fixture(scope="module")
def interpreter_results():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETER_SCRIPT, json.dumps(CASES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_matches_reference_in_interpreter(interpreter_results, case):
    res = interpreter_results[case[0]]
    tol = TOL[case[1]]
    bad = {k: v for k, v in res["errors"].items() if not v <= tol}
    assert not bad, f"{case[0]}: errors above {tol}: {bad}"
    assert not res["nan"]
    assert res["lse_inf_matches"]
    if case[5]:
        assert res["empty_rows_zero"]


def test_interpreter_env_does_not_leak():
    assert os.environ.get("TRITON_INTERPRET") in (None, "0", "")

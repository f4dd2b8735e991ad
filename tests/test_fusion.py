"""JAM-Uniform, JAM-Width and JAM-Cross built from two tiny parents: exact equivalences at
initialisation (fp32, 1e-5), masking across streams, and a tiny JAM-Cross that learns on CPU."""
from __future__ import annotations

import copy

import pytest
import torch

from jamtrain.models import (
    Backbone, FusionError, JamCross, build_model, fuse_cross, fuse_uniform, fuse_width, save_model,
)

V, TEXT_ROWS = 120, 80   # ids < 80: text pieces + specials; ids >= 80: image codes
TOL = dict(atol=1e-5, rtol=1e-5)


def parents(**kw) -> tuple[Backbone, Backbone]:
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append(build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2,
                                **kw}, V).eval())
    return out[0], out[1]


def batch(lo=0, hi=V, L=14):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(lo, hi, (2, L), generator=g)
    seg = torch.tensor([[0] * 5 + [1] * 7 + [-1] * 2, [0] * L], dtype=torch.int32)
    return tokens, seg


# ---------------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("w", [0.5, 0.3])
def test_uniform_is_weighted_average(w):
    t, i = parents()
    u = fuse_uniform(t, i, w)
    ti, im = t.state_dict(), i.state_dict()
    for k, p in u.state_dict().items():
        torch.testing.assert_close(p, w * ti[k] + (1 - w) * im[k], atol=1e-7, rtol=0)
    tokens, seg = batch()
    torch.testing.assert_close(fuse_uniform(t, i, 1.0).eval()(tokens, seg), t(tokens, seg), atol=0, rtol=0)


# ------------------------------------------------------------------------------------ width
@pytest.mark.parametrize("positions,activation", [("learned", "gelu"), ("rotary", "swiglu")])
def test_width_halves_compute_their_parents(positions, activation):
    t, i = parents(positions=positions, activation=activation)
    w = fuse_width(t, i).eval()
    d = t.cfg.d_model
    assert (w.cfg.d_model, w.cfg.n_heads, w.cfg.d_ff, w.cfg.norm_groups) == (2 * d, 8, 128, 2)
    q = w.layers[0].attn.q_proj.weight
    assert torch.equal(q[:d, d:], torch.zeros(d, d)) and torch.equal(q[d:, :d], torch.zeros(d, d))
    tokens, seg = batch()
    for s in (None, seg):
        h = w.hidden_states(tokens, s)
        torch.testing.assert_close(h[..., :d], t.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(h[..., d:], i.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(w(tokens, s), 0.5 * t(tokens, s) + 0.5 * i(tokens, s), **TOL)


def test_width_head_reproduces_chosen_parent():
    t, i = parents(tie_embeddings=True)
    tokens, seg = batch()
    torch.testing.assert_close(fuse_width(t, i, "text").eval()(tokens, seg), t(tokens, seg), **TOL)
    torch.testing.assert_close(fuse_width(t, i, "image").eval()(tokens, seg), i(tokens, seg), **TOL)


def test_parents_must_share_architecture():
    t, _ = parents()
    torch.manual_seed(0)
    other = build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 96}, V)
    for fuse in (fuse_uniform, fuse_width, lambda a, b: fuse_cross(a, b, TEXT_ROWS)):
        with pytest.raises(FusionError, match="d_ff"):
            fuse(t, other)


# ------------------------------------------------------------------------------------ cross
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cross_at_gate_zero_equals_parents(positions):
    t, i = parents(positions=positions)
    c = fuse_cross(t, i, TEXT_ROWS, embedding="separate", kernel="reference").eval()
    assert len(c.cross) == 2 and all(b.gate_t.item() == 0 == b.gate_i.item() for b in c.cross)
    tokens, seg = batch()
    for s in (None, seg):
        h_t, h_i = c.streams(tokens, s)
        torch.testing.assert_close(h_t, t.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(h_i, i.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(c(tokens, s), 0.5 * t(tokens, s) + 0.5 * i(tokens, s), **TOL)
    head_text = fuse_cross(t, i, TEXT_ROWS, embedding="separate", head="text").eval()
    torch.testing.assert_close(head_text(tokens, seg), t(tokens, seg), **TOL)


def test_cross_shared_embedding_rows():
    t, i = parents()
    c = fuse_cross(t, i, TEXT_ROWS, cross_every=2).eval()
    assert len(c.cross) == 1 and c.text.tok_emb is None and c.image.tok_emb is None
    table = c.embedding.weight
    assert torch.equal(table[:TEXT_ROWS], t.tok_emb.weight[:TEXT_ROWS])
    assert torch.equal(table[TEXT_ROWS:], i.tok_emb.weight[TEXT_ROWS:])
    # text-only input: the text stream is exactly the text parent; image-only: image stream = image parent
    text_tokens, seg = batch(0, TEXT_ROWS)
    image_tokens, _ = batch(TEXT_ROWS, V)
    torch.testing.assert_close(c.streams(text_tokens, seg)[0], t.hidden_states(text_tokens, seg), **TOL)
    torch.testing.assert_close(c.streams(image_tokens, seg)[1], i.hidden_states(image_tokens, seg), **TOL)
    # mixed input: each stream equals its parent run with the merged table
    mixed, _ = batch()
    merged = []
    for p in (t, i):
        q = copy.deepcopy(p)
        q.tok_emb.weight.data.copy_(table)
        merged.append(q.hidden_states(mixed, seg))
    h_t, h_i = c.streams(mixed, seg)
    torch.testing.assert_close(h_t, merged[0], **TOL)
    torch.testing.assert_close(h_i, merged[1], **TOL)


def open_gates(model: JamCross, value: float = 0.7) -> JamCross:
    with torch.no_grad():
        for b in model.cross:
            b.gate_t.fill_(value)
            b.gate_i.fill_(-value)
    return model


def test_cross_streams_exchange_causally_and_within_documents():
    t, i = parents()
    c = open_gates(fuse_cross(t, i, TEXT_ROWS, kernel="reference")).eval()
    tokens, seg = batch()
    assert not torch.allclose(c.streams(tokens)[0], t.hidden_states(tokens), atol=1e-3)
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 1) % V
    a, b = c(tokens), c(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=0, rtol=0)   # no stream sees the future
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # a packed document gives the same logits as alone: no leak across documents, none from padding
    out = c(tokens, seg)
    torch.testing.assert_close(out[0, 5:12], c(tokens[:1, 5:12])[0], **TOL)
    torch.testing.assert_close(out[0, :5], c(tokens[:1, :5])[0], **TOL)
    assert torch.isfinite(out).all()


def test_build_model_fuses_from_checkpoints(tmp_path):
    t, i = parents(positions="rotary")
    save_model(t, tmp_path / "text.safetensors")
    save_model(i, tmp_path / "image.pt")
    ckpt = {"preset": "tiny", "text_checkpoint": str(tmp_path / "text.safetensors"),
            "image_checkpoint": str(tmp_path / "image.pt")}
    tokens, seg = batch()
    uniform = build_model({**ckpt, "fusion": "uniform", "uniform_weight": 0.25}, V).eval()
    torch.testing.assert_close(uniform(tokens, seg), fuse_uniform(t, i, 0.25).eval()(tokens, seg), atol=0, rtol=0)
    width = build_model({**ckpt, "fusion": "width", "width_head": "image"}, V).eval()
    torch.testing.assert_close(width(tokens, seg), i(tokens, seg), **TOL)
    cross = build_model({**ckpt, "fusion": "cross", "text_rows": TEXT_ROWS, "cross_head": "text",
                         "cross_embedding": "separate"}, V).eval()
    torch.testing.assert_close(cross(tokens, seg), t(tokens, seg), **TOL)
    save_model(cross, tmp_path / "cross.safetensors")
    again = build_model({"checkpoint": str(tmp_path / "cross.safetensors")}, V).eval()
    torch.testing.assert_close(again(tokens, seg), cross(tokens, seg), atol=0, rtol=0)


def test_tiny_cross_trains_on_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention
    try:
        _train_tiny_cross()
    finally:
        torch.set_num_threads(threads)


def _train_tiny_cross():
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 64, "fusion": "cross",
                         "text_rows": TEXT_ROWS, "cross_kernel": "reference"}, V).train()
    # a learnable mixed-modal pattern: text ids, then the "image" ids that they determine
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, TEXT_ROWS, (8, 12), generator=g)
    tokens = torch.cat([text, text % 40 + TEXT_ROWS], 1)
    seg = torch.zeros_like(tokens, dtype=torch.int32)
    seg[:4, 18:] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        logits = model(tokens[:, :-1], seg[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert any(abs(b.gate_t.item()) > 1e-3 and abs(b.gate_i.item()) > 1e-3 for b in model.cross)

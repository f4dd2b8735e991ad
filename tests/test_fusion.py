"""JAM-Uniform, JAM-Width and JAM-Cross built from two tiny parents: exact equivalences at
initialisation (fp32, 1e-5), masking across streams, and a tiny JAM-Cross that learns on CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from jamtrain.models import (
    Backbone,
    FusionError,
    JamCross,
    build_model,
    fuse_cross,
    fuse_uniform,
    fuse_width,
    load_model,
    save_model,
)
from jamtrain.models.checkpoint import CheckpointError, save_state

V, TEXT_ROWS = 120, 80  # ids < 80: text pieces + specials; ids >= 80: image codes
TOL = dict(atol=1e-5, rtol=1e-5)


def parents(**kw) -> tuple[Backbone, Backbone]:
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append(
            build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2, **kw}, V).eval()
        )
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
    out = torch.cat([t.head.weight[:TEXT_ROWS], i.head.weight[TEXT_ROWS:]])  # the shared output table
    for s in (None, seg):
        h_t, h_i = c.streams(tokens, s)
        torch.testing.assert_close(h_t, t.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(h_i, i.hidden_states(tokens, s), **TOL)
        torch.testing.assert_close(c(tokens, s), (0.5 * h_t + 0.5 * h_i) @ out.T, **TOL)
    # cross_head text: the text rows' logits are the text parent's; image: the image rows' the image parent's
    head_text = fuse_cross(t, i, TEXT_ROWS, embedding="separate", head="text").eval()
    torch.testing.assert_close(head_text(tokens, seg)[..., :TEXT_ROWS], t(tokens, seg)[..., :TEXT_ROWS], **TOL)
    head_image = fuse_cross(t, i, TEXT_ROWS, embedding="separate", head="image").eval()
    torch.testing.assert_close(head_image(tokens, seg)[..., TEXT_ROWS:], i(tokens, seg)[..., TEXT_ROWS:], **TOL)
    # every row from the text parent: the fused model is the text parent, shared table or not
    for emb in ("shared", "separate"):
        whole = fuse_cross(t, i, V, embedding=emb, head="text").eval()
        torch.testing.assert_close(whole(tokens, seg), t(tokens, seg), **TOL)


@pytest.mark.parametrize("tied", [False, True])
def test_cross_output_is_a_2d_to_d_layer_then_the_shared_output_embedding(tied, tmp_path):
    t, i = parents(tie_embeddings=tied)
    d = t.cfg.d_model
    c = fuse_cross(t, i, TEXT_ROWS, head="average").eval()
    assert tuple(c.proj.weight.shape) == (d, 2 * d)
    eye = torch.eye(d)
    assert torch.equal(c.proj.weight, torch.cat([0.5 * eye, 0.5 * eye], 1))
    table = c.output_weight()
    assert torch.equal(table[:TEXT_ROWS], t.head_weight()[:TEXT_ROWS])
    assert torch.equal(table[TEXT_ROWS:], i.head_weight()[TEXT_ROWS:])
    if tied:  # tied parents: the shared input table is the output table too
        assert c.head is None and table is c.embedding.weight
    else:  # untied: the parents' output tables merged the same way, kept apart from the input table
        assert tuple(c.head.weight.shape) == (V, d) and not torch.equal(table, c.embedding.weight)
    # parameters: both backbones without heads and token tables, the cross blocks, one input
    # table, 2d x d, and one [V, d] output table unless tied
    stack = sum(p.numel() for n, p in t.named_parameters() if not n.startswith(("head.", "tok_emb.")))
    cross = sum(p.numel() for p in c.cross.parameters())
    assert sum(p.numel() for p in c.parameters()) == 2 * stack + cross + V * d + 2 * d * d + (0 if tied else V * d)
    # a tied model round-trips through a file with the table stored once
    tokens, seg = batch()
    with torch.no_grad():
        c.proj.weight.add_(0.01)  # a trained projection, not its initial value
        want = c(tokens, seg)
    save_model(c, tmp_path / "c.safetensors")
    again = load_model(tmp_path / "c.safetensors").eval()
    assert (again.head is None) == tied
    torch.testing.assert_close(again(tokens, seg), want, atol=0, rtol=0)


def test_cross_checkpoint_of_the_old_direct_head_is_refused(tmp_path):
    t, i = parents()
    c = fuse_cross(t, i, TEXT_ROWS)
    state = {k: v for k, v in c.state_dict().items() if k not in ("proj.weight", "head.weight")}
    state["head.weight"] = torch.zeros(V, 2 * t.cfg.d_model)
    save_state(state, {"kind": "cross", "config": c.cfg.to_dict()}, tmp_path / "old.safetensors")
    with pytest.raises(CheckpointError, match="maps 2d straight to the vocabulary"):
        load_model(tmp_path / "old.safetensors")


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
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=0, rtol=0)  # no stream sees the future
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
    ckpt = {
        "preset": "tiny",
        "text_checkpoint": str(tmp_path / "text.safetensors"),
        "image_checkpoint": str(tmp_path / "image.pt"),
    }
    tokens, seg = batch()
    uniform = build_model({**ckpt, "fusion": "uniform", "uniform_weight": 0.25}, V).eval()
    torch.testing.assert_close(uniform(tokens, seg), fuse_uniform(t, i, 0.25).eval()(tokens, seg), atol=0, rtol=0)
    width = build_model({**ckpt, "fusion": "width", "width_head": "image"}, V).eval()
    torch.testing.assert_close(width(tokens, seg), i(tokens, seg), **TOL)
    cross = build_model(
        {**ckpt, "fusion": "cross", "text_rows": TEXT_ROWS, "cross_head": "text", "cross_embedding": "separate"}, V
    ).eval()
    torch.testing.assert_close(cross(tokens, seg)[..., :TEXT_ROWS], t(tokens, seg)[..., :TEXT_ROWS], **TOL)
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
    model = build_model(
        {
            "preset": "tiny",
            "d_model": 32,
            "n_heads": 4,
            "d_ff": 64,
            "fusion": "cross",
            "text_rows": TEXT_ROWS,
            "cross_kernel": "reference",
        },
        V,
    ).train()
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

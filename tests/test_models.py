"""The decoder backbone: causality, document resets, presets, checkpoints, build_model contract."""

from __future__ import annotations

import pytest
import torch

from jamdata.config import ConfigError
from jamtrain.cli import main as jamtrain_main
from jamtrain.models import (
    Backbone,
    CheckpointError,
    JamCross,
    PRESETS,
    build_model,
    load_model,
    parameter_count,
    save_model,
)

V = 97


def tiny(**kw) -> Backbone:
    torch.manual_seed(kw.pop("seed", 0))
    return build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 64, **kw}, V).eval()


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_forward_contract_and_causality(positions):
    model = tiny(positions=positions)
    tokens = torch.randint(0, V, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, V) and logits.dtype == torch.float32
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % V
    other = model(changed)
    torch.testing.assert_close(logits[:, :10], other[:, :10], atol=0, rtol=0)
    assert not torch.allclose(logits[:, 10:], other[:, 10:])


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_segments_make_packed_documents_independent(positions, activation):
    model = tiny(positions=positions, activation=activation)
    doc1, doc2 = torch.randint(0, V, (1, 5)), torch.randint(0, V, (1, 8))
    packed = torch.cat([doc1, doc2, torch.zeros(1, 3, dtype=torch.long)], 1)
    seg = torch.tensor([[0] * 5 + [1] * 8 + [-1] * 3], dtype=torch.int32)
    out = model(packed, seg)
    torch.testing.assert_close(out[:, :5], model(doc1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 5:13], model(doc2), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()
    # without segment ids the second document sees the first
    assert not torch.allclose(model(packed)[:, 5:13], model(doc2), atol=1e-4)


def test_tied_head_uses_embedding():
    model = tiny(tie_embeddings=True)
    assert model.head is None
    tokens = torch.randint(0, V, (1, 6))
    h = model.hidden_states(tokens)
    torch.testing.assert_close(model(tokens), h @ model.tok_emb.weight.T)


def test_presets_and_7b_size():
    assert PRESETS["7b"] == dict(n_layers=32, d_model=4096, n_heads=32, d_ff=16384, max_seq_len=4096)
    n = parameter_count({"preset": "7b"}, 65536)
    # 32 layers x (4 d^2 attention + 2 d x 4d FFN + 2 norm weights) + embedding and head (V x d)
    # + learned positions (4096 x d) + final norm
    d = 4096
    assert n == 32 * (12 * d * d + 2 * d) + 2 * 65536 * d + 4096 * d + d
    assert 6.9e9 < n < 7.1e9
    cross = parameter_count({"preset": "7b", "fusion": "cross", "text_rows": 57344}, 65536)
    assert 1.75e10 < cross < 1.85e10  # ~19B in the paper with a larger vocabulary


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = tiny(positions="rotary", tie_embeddings=True)
    path = save_model(model, tmp_path / f"m{suffix}")
    again = load_model(path)
    assert isinstance(again, Backbone) and again.cfg == model.cfg
    tokens = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(again.eval()(tokens), model(tokens), atol=0, rtol=0)
    same = build_model({"checkpoint": str(path)}, V).eval()
    torch.testing.assert_close(same(tokens), model(tokens), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="vocabulary"):
        build_model({"checkpoint": str(path)}, V + 1)


def test_bare_state_dict_needs_config(tmp_path):
    model = tiny()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_model(tmp_path / "bare.pt")
    again = load_model(tmp_path / "bare.pt", model.cfg).eval()
    tokens = torch.randint(0, V, (1, 7))
    torch.testing.assert_close(again(tokens), model(tokens), atol=0, rtol=0)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.model.n_layer'.*unknown key"):
        build_model({"n_layer": 2}, V)
    with pytest.raises(ConfigError, match="positions.*allowed: learned, rotary"):
        build_model({"positions": "alibi"}, V)
    with pytest.raises(ConfigError, match="divisible"):
        build_model({"d_model": 30, "n_heads": 4}, V)
    with pytest.raises(ConfigError, match="cross_every"):
        build_model({"fusion": "cross", "cross_every": 3, "text_rows": 50}, V)
    with pytest.raises(ConfigError, match="text_rows"):
        build_model({"fusion": "cross"}, V)  # vocab smaller than 8192 codes: cannot infer


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    tokens = torch.randint(0, V, (2, 12))
    grads = []
    for ac in (False, True):
        model = tiny(activation_checkpointing=ac, fusion="cross", text_rows=60, seed=3).train()
        model(tokens).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_cli_init_fuse_info(tmp_path, capsys):
    t, i, out = tmp_path / "text.safetensors", tmp_path / "image.pt", tmp_path / "cross.safetensors"
    assert (
        jamtrain_main(["model", "init", "--vocab-size", str(V), "--d-model", "32", "--n-heads", "4", "--out", str(t)])
        == 0
    )
    assert (
        jamtrain_main(
            [
                "model",
                "init",
                "--vocab-size",
                str(V),
                "--d-model",
                "32",
                "--n-heads",
                "4",
                "--seed",
                "1",
                "--out",
                str(i),
            ]
        )
        == 0
    )
    assert (
        jamtrain_main(
            [
                "fuse",
                "--mode",
                "cross",
                "--text",
                str(t),
                "--image",
                str(i),
                "--out",
                str(out),
                "--text-rows",
                "60",
                "--head",
                "text",
            ]
        )
        == 0
    )
    model = load_model(out)
    assert isinstance(model, JamCross) and model.cfg.text_rows == 60 and model.cfg.head_init == "text"
    tokens = torch.randint(0, 60, (1, 8))
    torch.testing.assert_close(
        model.eval()(tokens)[..., :60], load_model(t).eval()(tokens)[..., :60], atol=1e-5, rtol=1e-5
    )
    assert jamtrain_main(["model", "info", str(out)]) == 0
    assert '"kind": "cross"' in capsys.readouterr().out
    # fusing parents of different shapes fails with one clear line
    other = tmp_path / "wide.pt"
    assert jamtrain_main(["model", "init", "--vocab-size", str(V), "--d-model", "64", "--out", str(other)]) == 0
    assert (
        jamtrain_main(
            ["fuse", "--mode", "width", "--text", str(t), "--image", str(other), "--out", str(tmp_path / "x.pt")]
        )
        == 1
    )
    assert "differ in architecture" in capsys.readouterr().err


def test_safetensors_header_is_the_same_bytes_every_time(tmp_path):
    """The library orders a header's metadata by a per-call hash; the saved file must not vary."""
    from safetensors import safe_open

    from jamtrain.models.checkpoint import save_safetensors

    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    meta = {f"key{i}": f'value "{i}" é' for i in range(8)}
    files = []
    for i in range(6):
        save_safetensors(tensors, tmp_path / f"m{i}.safetensors", meta)
        files.append((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(set(files)) == 1
    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("b"), tensors["b"])

"""Hugging Face LLaMA parents: import (local, sharded, fsspec URL) with logits equal to
transformers' own forward, export that transformers reloads with identical logits, one-line
refusals of what the backbone cannot represent, vocabulary extension, and the JAM fusions of two
imported parents. The reference models are small random `transformers.LlamaForCausalLM`s."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import fsspec
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from jamdata.config import ConfigError
from jamdata.errors import ModelError
from jamdata.vocab import JointVocab
from jamtrain.cli import main as jamtrain_main
from jamtrain.models import (
    Backbone,
    JamCross,
    build_model,
    count_parameters,
    extend_vocab,
    fuse_cross,
    fuse_uniform,
    fuse_width,
    load_model,
    read_checkpoint,
)
from jamtrain.models.checkpoint import read_description
from jamtrain.models.hf import HFError, config_from_hf, import_checkpoint, read_config
from jamtrain.models.hf_export import export_hf
from jamtrain.models.resize import NOISE, check_text_rows, extend_state

V = 300  # the LLaMA's own vocabulary (its SentencePiece pieces)
VOCAB = JointVocab(text_size=V, text_model_sha256="0" * 64, n_image_codes=32)  # 300 + 22 + 32 = 354
EXACT = dict(atol=1e-5, rtol=1e-5)


def make_hf(
    root: Path, tied: bool = False, seed: int = 0, max_shard_size: str | None = None, **overrides
) -> tuple[Path, transformers.LlamaForCausalLM]:
    """A random 2-layer LLaMA (GQA: 4 query heads, 2 key/value heads) saved with save_pretrained.
    Norm weights are randomised too, so that a mis-mapped norm cannot go unnoticed."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        **overrides,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(root, **kw)
    return root, model


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, transformers.LlamaForCausalLM]]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "tied": make_hf(root / "tied", tied=True, seed=1),
        "untied": make_hf(root / "untied", seed=2),
        "sharded": make_hf(root / "sharded", seed=3, max_shard_size="40KB"),
        "image": make_hf(root / "image", seed=4),
    }


def tokens(n: int = 2, length: int = 12, hi: int = V, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, hi, (n, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model: transformers.LlamaForCausalLM, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def imported(sources, name: str, tmp_path: Path, **kw) -> Backbone:
    out = tmp_path / f"{name}.safetensors"
    import_checkpoint(str(sources[name][0]), out, **kw)
    return load_model(out).eval()


# ------------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("name", ["tied", "untied", "sharded"])
def test_import_matches_transformers_logits(sources, tmp_path, name):
    src, ref = sources[name]
    if name == "sharded":
        assert (src / "model.safetensors.index.json").exists() and not (src / "model.safetensors").exists()
    model = imported(sources, name, tmp_path)
    cfg = model.cfg
    assert (cfg.norm, cfg.activation, cfg.positions, cfg.kv_heads, cfg.d_ff) == ("rmsnorm", "swiglu", "rotary", 2, 96)
    assert cfg.tie_embeddings == (name == "tied") and (model.head is None) == (name == "tied")
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf_logits(ref, x), **EXACT)
        # with segment ids every document is computed as if alone (positions restart)
        seg = torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [-1] * 3], dtype=torch.int32)
        got = model(x, seg)
    torch.testing.assert_close(got[0, :5], hf_logits(ref, x[:1, :5])[0], **EXACT)
    torch.testing.assert_close(got[0, 5:], hf_logits(ref, x[:1, 5:])[0], **EXACT)
    torch.testing.assert_close(got[1, :9], hf_logits(ref, x[1:, :9])[0], **EXACT)
    meta = read_description(tmp_path / f"{name}.safetensors")
    assert meta["kind"] == "backbone" and meta["source"] == str(src)
    assert meta["hf_config"] == json.loads((src / "config.json").read_text())


def test_import_from_a_memory_url_equals_the_local_import(sources, tmp_path):
    src = sources["sharded"][0]
    fs = fsspec.filesystem("memory")
    try:
        for f in src.iterdir():
            fs.pipe(f"/hf-sharded/{f.name}", f.read_bytes())
        cfg, out = import_checkpoint("memory://hf-sharded", tmp_path / "mem.safetensors")
        assert cfg == read_config("memory://hf-sharded") == read_config(str(src))
    finally:
        fs.rm("/hf-sharded", recursive=True)
    _, local = import_checkpoint(str(src), tmp_path / "local.pt")
    (mem_meta, mem), (local_meta, loc) = read_checkpoint(out), read_checkpoint(local)
    assert mem.keys() == loc.keys() and all(torch.equal(mem[k], loc[k]) for k in mem)
    assert mem_meta["source"] == "memory://hf-sharded" and mem_meta["config"] == local_meta["config"]
    # export to a URL too: shards, index and config written there import back to the same tensors
    try:
        files = export_hf(load_model(local), "memory://hf-export", max_shard_size=50000)
        assert sorted(fs.ls("/hf-export", detail=False)) == sorted(f"/hf-export/{f}" for f in files)
        _, again = import_checkpoint("memory://hf-export", tmp_path / "again.safetensors")
    finally:
        fs.rm("/hf-export", recursive=True)
    back = read_checkpoint(again)[1]
    assert back.keys() == loc.keys() and all(torch.equal(back[k], loc[k]) for k in loc)


def test_import_casts_to_the_requested_dtype(sources, tmp_path):
    src, ref = sources["untied"]
    model = imported(sources, "untied", tmp_path, dtype=torch.bfloat16)  # load_model: fp32 parameters
    _, written = read_checkpoint(tmp_path / "untied.safetensors")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    stored = load_file(str(src / "model.safetensors"))
    torch.testing.assert_close(
        written["layers.1.ffn.gate.weight"],
        stored["model.layers.1.mlp.gate_proj.weight"].to(torch.bfloat16),
        atol=0,
        rtol=0,
    )
    x = tokens()
    with torch.no_grad():  # bf16 weights: close to the fp32 logits, not equal
        assert (model(x).float() - hf_logits(ref, x)).abs().max() < 0.1


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("name,max_shard", [("tied", None), ("untied", 30000)])
def test_export_reloads_in_transformers_with_identical_logits(sources, tmp_path, name, max_shard):
    src, ref = sources[name]
    model = imported(sources, name, tmp_path)
    base = read_description(tmp_path / f"{name}.safetensors")["hf_config"]
    out = tmp_path / "export"
    files = export_hf(model, str(out), None, max_shard, base)
    assert files[0] == "config.json" and all((out / f).exists() for f in files)
    assert ("model.safetensors.index.json" in files) == (max_shard is not None)
    if max_shard:
        assert len([f for f in files if f.startswith("model-")]) > 1
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    hf = json.loads((out / "config.json").read_text())
    assert hf["bos_token_id"] == base["bos_token_id"] and hf["dtype"] == "float32"
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    x = tokens(seed=9)
    torch.testing.assert_close(hf_logits(back, x), hf_logits(ref, x), atol=0, rtol=0)
    # a directory holding a checkpoint is refused; --overwrite removes the stale weight files
    with pytest.raises(HFError, match="already holds a checkpoint"):
        export_hf(model, str(out))
    files = export_hf(model, str(out), torch.bfloat16, None, base, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(files) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_non_llama_backbones_do_not_export(sources, tmp_path):
    opt = build_model({"preset": "tiny", "d_model": 32, "n_heads": 4, "d_ff": 64}, V)
    with pytest.raises(HFError, match="norm 'layernorm'"):
        export_hf(opt, str(tmp_path / "opt"))
    a, b = imported(sources, "untied", tmp_path), imported(sources, "image", tmp_path)
    with pytest.raises(HFError, match="norm_groups 2"):
        export_hf(fuse_width(a, b), str(tmp_path / "width"))
    with pytest.raises(HFError, match="JAM-Cross"):
        export_hf(fuse_cross(a, b, text_rows=200), str(tmp_path / "cross"))
    assert not any(tmp_path.glob("*/config.json"))
    # on the command line: one line, exit 1
    ck = tmp_path / "opt.safetensors"
    from jamtrain.models import save_model

    save_model(opt, ck)
    assert jamtrain_main(["model", "export-hf", str(ck), "--out", str(tmp_path / "opt")]) == 1


# ---------------------------------------------------------------------------------- refusals
def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_weights(d: Path, fn) -> None:
    state = load_file(str(d / "model.safetensors"))
    fn(state)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


BAD = {
    "architecture": (
        lambda d: _edit_config(d, model_type="mistral", architectures=["MistralForCausalLM"]),
        "unsupported architecture: model_type 'mistral'",
    ),
    "activation": (lambda d: _edit_config(d, hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
    "bias": (lambda d: _edit_config(d, attention_bias=True), "attention_bias is true"),
    "rope": (
        lambda d: _edit_config(d, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
        "unsupported rope_type 'llama3'",
    ),
    "head_dim": (lambda d: _edit_config(d, head_dim=32), "head_dim 32 != hidden_size / num_attention_heads = 16"),
    "tensors": (
        lambda d: _edit_weights(d, lambda s: s.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(1)})),
        "unexpected tensor 'model.layers.2.mlp.up_proj.weight'",
    ),
    "missing": (lambda d: _edit_weights(d, lambda s: s.pop("lm_head.weight")), "missing tensor 'lm_head.weight'"),
    "shape": (
        lambda d: _edit_config(d, intermediate_size=80),
        r"model.layers.0.mlp.down_proj.weight has shape \(64, 96\), config.json implies \(64, 80\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoints_are_refused_in_one_line_naming_the_key(sources, tmp_path, case, capsys):
    d = tmp_path / "bad"
    shutil.copytree(sources["untied"][0], d)
    damage, message = BAD[case]
    damage(d)
    with pytest.raises(HFError, match=message) as e:
        import_checkpoint(str(d), tmp_path / "x.safetensors")
    assert "\n" not in str(e.value) and not (tmp_path / "x.safetensors").exists()
    assert jamtrain_main(["model", "import", str(d), "--out", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jamtrain: error: ")


def test_pickled_weights_are_never_loaded(sources, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(sources["untied"][0] / "config.json", d)
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return open, (str(marker), "w")

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload()}))
    with pytest.raises(
        HFError,
        match="no model.safetensors or model.safetensors.index.json "
        r"\(pytorch_model.bin is a pickle",
    ):
        import_checkpoint(str(d), tmp_path / "x.safetensors")
    assert not marker.exists()


# ------------------------------------------------------------------------------ vocabulary
@pytest.mark.parametrize("name", ["tied", "untied"])
def test_vocab_extension_keeps_old_logits_and_initialises_new_rows_at_the_mean(sources, tmp_path, name):
    src, ref = sources[name]
    model = imported(sources, name, tmp_path, vocab_size=VOCAB.size, seed=3)
    assert model.cfg.vocab_size == VOCAB.size == 354
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[..., :V], hf_logits(ref, x), **EXACT)
    stored = load_file(str(src / "model.safetensors"))
    tables = [("tok_emb.weight", "model.embed_tokens.weight")]
    if name == "untied":
        tables.append(("head.weight", "lm_head.weight"))
    for ours, theirs in tables:
        w, old = model.state_dict()[ours], stored[theirs]
        assert torch.equal(w[:V], old)  # existing rows unchanged
        new = w[V:]
        dev = (new - old.mean(0)) / old.std(0)
        assert dev.abs().max() < 6 * NOISE and 0.5 * NOISE < dev.std() < 2 * NOISE
        assert len({tuple(r.tolist()) for r in new}) == len(new)  # distinct rows
    # deterministic: the same seed gives the same rows, via the state dict or the model
    base = imported(sources, name, tmp_path)
    same = extend_vocab(base, VOCAB.size, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))
    other = extend_vocab(base, VOCAB.size, seed=4)
    assert not torch.equal(other.tok_emb.weight[V:], model.tok_emb.weight[V:])
    _, zero = extend_state(base.state_dict(), base.cfg, VOCAB.size, 0, noise=0.0)
    torch.testing.assert_close(zero["tok_emb.weight"][V:], base.tok_emb.weight.mean(0).expand(VOCAB.size - V, -1))
    with pytest.raises(ModelError, match="cannot shrink"):
        extend_state(base.state_dict(), base.cfg, V - 1)
    with pytest.raises(ModelError, match="299 embedding rows but the joint vocabulary has 300 text pieces"):
        check_text_rows(V - 1, VOCAB)


def test_cli_import_with_the_joint_vocabulary_then_export(sources, tmp_path, capsys):
    src, ref = sources["untied"]
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    ck = tmp_path / "text.safetensors"
    assert jamtrain_main(["model", "import", str(src), "--out", str(ck), "--vocab", str(tok), "--seed", "2"]) == 0
    assert "vocabulary 354" in capsys.readouterr().out
    model = load_model(ck).eval()
    assert model.cfg.vocab_size == VOCAB.size
    # import then extend-vocab gives the same file contents as importing with --vocab
    plain, grown = tmp_path / "plain.safetensors", tmp_path / "grown.safetensors"
    assert jamtrain_main(["model", "import", str(src), "--out", str(plain)]) == 0
    assert (
        jamtrain_main(
            [
                "model",
                "extend-vocab",
                str(plain),
                "--vocab",
                str(tok / "vocab.json"),
                "--seed",
                "2",
                "--out",
                str(grown),
            ]
        )
        == 0
    )
    a, b = read_checkpoint(ck)[1], read_checkpoint(grown)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_description(grown)["hf_config"]["vocab_size"] == V  # the source's config travels along
    # a vocabulary made with another tokenizer is refused in one line
    (tok / "vocab.json").write_text(json.dumps(JointVocab(V + 1, "1" * 64, 32).to_dict()))
    capsys.readouterr()
    assert jamtrain_main(["model", "import", str(src), "--out", str(tmp_path / "x.pt"), "--vocab", str(tok)]) == 1
    assert "embedding rows but the joint vocabulary has 301 text pieces" in capsys.readouterr().err
    # back to Hugging Face: the extended model loads, old tokens keep their logits
    out = tmp_path / "hf"
    assert jamtrain_main(["model", "export-hf", str(ck), "--out", str(out), "--max-shard-size", "100KB"]) == 0
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert back.config.vocab_size == VOCAB.size and (out / "model.safetensors.index.json").exists()
    x = tokens()
    torch.testing.assert_close(hf_logits(back, x)[..., :V], hf_logits(ref, x), **EXACT)
    assert jamtrain_main(["model", "export-hf", str(ck), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- fusions
def parents(sources, tmp_path) -> tuple[Backbone, Backbone]:
    return (
        imported(sources, "untied", tmp_path, vocab_size=VOCAB.size, seed=0),
        imported(sources, "image", tmp_path, vocab_size=VOCAB.size, seed=1),
    )


def test_cross_of_two_imported_parents_runs_forward_and_backward(sources, tmp_path):
    text, image = parents(sources, tmp_path)
    cross = fuse_cross(text, image, text_rows=VOCAB.image_offset, head="text")
    x = tokens(hi=V)
    seg = torch.tensor([[0] * 6 + [1] * 6, [0] * 12], dtype=torch.int32)
    with torch.no_grad():  # gates start at 0: on text-only input the text stream is the text parent
        rows = VOCAB.image_offset  # the text rows' logits (the image rows are the image parent's table)
        torch.testing.assert_close(cross.eval()(x, seg)[..., :rows], text(x, seg)[..., :rows], **EXACT)
        torch.testing.assert_close(cross(x)[..., :V], hf_logits(sources["untied"][1], x), **EXACT)
    cross = fuse_cross(text, image, text_rows=VOCAB.image_offset, head="average").train()
    mixed = torch.cat([x[:, :6], VOCAB.image_offset + x[:, 6:] % VOCAB.n_image_codes], 1)
    loss = torch.nn.functional.cross_entropy(cross(mixed, seg)[:, :-1].flatten(0, 1), mixed[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in cross.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["cross.0.gate_t"].abs() > 0 and grads["image.layers.1.ffn.gate.weight"].abs().sum() > 0


def test_width_and_uniform_of_two_imported_parents(sources, tmp_path):
    text, image = parents(sources, tmp_path)
    x = tokens(hi=VOCAB.size)
    with torch.no_grad():
        width = fuse_width(text, image, "average").eval()
        torch.testing.assert_close(width(x), 0.5 * text(x) + 0.5 * image(x), **EXACT)
        uniform = fuse_uniform(text, image, 0.3).eval()
    out = tmp_path / "uniform-hf"
    export_hf(uniform, str(out), max_shard_size=50000)
    back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(back, x), uniform(x), **EXACT)


def test_build_model_fuses_imported_parents_extending_their_vocabulary(sources, tmp_path):
    t, i = tmp_path / "t.safetensors", tmp_path / "i.safetensors"
    import_checkpoint(str(sources["untied"][0]), t)
    import_checkpoint(str(sources["image"][0]), i)
    section = {
        "fusion": "cross",
        "text_checkpoint": str(t),
        "image_checkpoint": str(i),
        "n_image_codes": 32,
        "norm": "rmsnorm",
        "activation": "swiglu",
        "positions": "rotary",
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 96,
        "max_seq_len": 128,
    }
    with pytest.raises(ConfigError, match="checkpoint vocabulary 300 != data vocabulary 354.*extend_vocab: true"):
        build_model(section, VOCAB.size)
    torch.manual_seed(0)  # the cross blocks are freshly initialised
    model = build_model({**section, "extend_vocab": True, "extend_vocab_seed": 5}, VOCAB.size)
    assert isinstance(model, JamCross) and model.cfg.text_rows == VOCAB.image_offset
    text = extend_vocab(load_model(t), VOCAB.size, seed=5)  # text parent: seed
    image = extend_vocab(load_model(i), VOCAB.size, seed=6)  # image parent: seed + 1
    emb = model.embedding.weight
    assert torch.equal(emb[: VOCAB.image_offset], text.tok_emb.weight[: VOCAB.image_offset])
    assert torch.equal(emb[VOCAB.image_offset :], image.tok_emb.weight[VOCAB.image_offset :])
    torch.manual_seed(0)
    again = build_model({**section, "extend_vocab": True, "extend_vocab_seed": 5}, VOCAB.size)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    single = build_model({"checkpoint": str(t), "extend_vocab": True}, VOCAB.size)
    assert isinstance(single, Backbone) and single.cfg.vocab_size == VOCAB.size


def test_llama_family_config_keys(sources):
    section = {
        "preset": "tiny",
        "norm": "rmsnorm",
        "activation": "swiglu",
        "positions": "rotary",
        "n_kv_heads": 2,
        "d_ff": 96,
        "tie_embeddings": True,
        "norm_eps": 1e-6,
        "max_seq_len": 128,
    }
    model = build_model(section, V)
    ref = sources["tied"][1]
    assert model.cfg == config_from_hf(ref.config.to_dict())
    assert count_parameters(model) == sum(p.numel() for p in ref.parameters())
    for bad, match in (  # each names the key: train.model.<key>
        ({"norm_bias": True}, "'train.model.norm_bias'.*rmsnorm has a weight only"),
        ({"n_kv_heads": 3}, "'train.model.n_kv_heads'.*n_kv_heads 3 must divide"),
        ({"norm": "batchnorm"}, "'train.model.norm'.*allowed: layernorm, rmsnorm"),
        ({"n_kv_heads": 1.5}, "'train.model.n_kv_heads'.*must be int, got 1.5"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_model({**section, **bad}, V)

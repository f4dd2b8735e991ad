"""Training loop pieces that need no DeepSpeed engine: the masked loss (checked by gradient), the
held-out masking, the schedule, checkpoint verification and fallback, perplexity and the dry run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from jamdata.config import Config, ConfigError
from jamtrain import checkpoint as ckpt
from jamtrain.evaluate import Holdout, evaluate, heldout_sequences
from jamtrain.models import build_model
from jamtrain.schedule import WarmupDecay
from jamtrain.export import load_exported, write_export
from jamtrain.loss import mask_heldout, masked_loss
from jamtrain.settings import parse_settings
from jamtrain.sizing import dry_run, memory_estimate
from test_train_data import REPO, TINY_MODEL, VOCAB, write_config, write_datasets


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_datasets(tmp_path_factory.mktemp("data"))


def _batch(seed: int = 0, b: int = 2, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB.text_size, (b, length), generator=g)
    tokens[0, 6:] = VOCAB.image_offset + torch.arange(6) % VOCAB.n_image_codes  # image targets in row 0
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, :4] = False  # a masked prompt
    mask[1, 9:] = False  # padding
    return {"tokens": tokens, "loss_mask": mask}


def test_masked_targets_get_no_loss_and_no_gradient():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size)
    batch = _batch()
    tokens, mask = batch["tokens"], batch["loss_mask"]
    logits = model(tokens[:, :-1]).detach().requires_grad_(True)
    loss, stats = masked_loss(logits, tokens, mask, VOCAB.image_offset)
    loss.backward()
    target_mask = mask[:, 1:]
    grad_norm = logits.grad.abs().sum(-1)
    assert torch.all(grad_norm[~target_mask] == 0), "a masked target position received gradient"
    assert torch.all(grad_norm[target_mask] > 0)
    # the loss is the mean over exactly the unmasked targets
    nll = torch.nn.functional.cross_entropy(logits.detach().transpose(1, 2), tokens[:, 1:], reduction="none")
    assert loss.item() == pytest.approx(nll[target_mask].mean().item(), rel=1e-6)
    # changing a masked target changes nothing
    other = tokens.clone()
    other[0, 1:4] = (other[0, 1:4] + 1) % VOCAB.size
    other[1, 9:] = VOCAB.pad_id
    loss2, _ = masked_loss(logits.detach(), other, mask, VOCAB.image_offset)
    assert loss2.item() == loss.item()
    # per-modality sums: image targets are row 0 positions 6.. (targets index 5..)
    image = (tokens[:, 1:] >= VOCAB.image_offset) & target_mask
    text = target_mask & ~image
    assert stats[1].item() == text.sum().item() and stats[3].item() == image.sum().item() == 6
    assert stats[2].item() == pytest.approx(nll[image].sum().item(), rel=1e-6)


def test_masked_loss_gradient_reaches_model_only_through_unmasked_targets():
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size)
    batch = _batch(1)
    tokens = batch["tokens"]
    none = torch.zeros_like(batch["loss_mask"])
    loss, _ = masked_loss(model(tokens[:, :-1]), tokens, none, VOCAB.image_offset)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_heldout_samples_are_masked_out_of_training_by_key():
    holdout = Holdout(0.5)
    keys = [["web/part-00000:1", "web/part-00000:2", "web/part-00000:3"], ["img0x0001"]]
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, -1], [0, 0, 0, 0, 0, 0, -1]], dtype=torch.int32)
    mask = seg >= 0
    batch = {"loss_mask": mask, "segment_ids": seg, "keys": keys, "dataset_index": torch.tensor([0, 1])}
    out = mask_heldout(batch, ["text-tokens", "image-caption"], holdout)
    for i, row in enumerate(keys):
        for j, key in enumerate(row):
            want = not holdout.is_heldout(["text-tokens", "image-caption"][i], key)
            assert bool(out[i][seg[i] == j].all()) == want and bool(out[i][seg[i] == j].any()) == want
    assert mask_heldout(batch, ["a", "b"], None) is mask


def test_schedule_warmup_then_cosine_and_linear():
    f = WarmupDecay(4, 14, "cosine", 0.1)
    assert [round(f(s), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    g = WarmupDecay(0, 10, "linear", 0.0)
    assert [g(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="decay must be one of"):
        WarmupDecay(1, 10, "poly")


def _fake_checkpoint(root: Path, step: int, seal: bool = True) -> Path:
    d = root / ckpt.tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(bytes(range(200)) * 5)
    (d / ckpt.rank_file(0)).write_bytes(b"state" * 10)
    if seal:
        from jamdata.io import sha256_file

        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in d.iterdir()}
        (d / ckpt.MARKER).write_text(json.dumps({"step": step, "world_size": 1, "files": files, "meta": {}}))
    return d


def test_partial_and_corrupt_checkpoints_are_refused_and_the_previous_good_one_used(tmp_path):
    good = _fake_checkpoint(tmp_path, 2)
    altered = _fake_checkpoint(tmp_path, 4)
    truncated = _fake_checkpoint(tmp_path, 6)
    partial = _fake_checkpoint(tmp_path, 8, seal=False)
    (tmp_path / ".tmp-step-00000010").mkdir()  # a save killed before its rename
    data = bytearray((altered / "mp_rank_00_model_states.pt").read_bytes())
    data[100] ^= 0xFF
    (altered / "mp_rank_00_model_states.pt").write_bytes(bytes(data))
    with open(truncated / ckpt.rank_file(0), "r+b") as f:
        f.truncate(7)
    messages: list[str] = []
    choice = ckpt.find_resumable(tmp_path, warn=messages.append)
    assert choice.path == good
    assert [p.name for p, _ in choice.refused] == ["step-00000008", "step-00000006", "step-00000004"]
    assert "no COMPLETE.json (the save did not finish)" in messages[0]
    assert "trainer_rank00000.pt: 7 bytes, marker says 50 (truncated or altered)" in messages[1]
    assert "mp_rank_00_model_states.pt: sha256 differs from the marker (altered)" in messages[2]
    assert all("falling back to the previous one" in m for m in messages)
    # size-only verification misses the altered byte but not the truncation
    assert ckpt.find_resumable(tmp_path, deep=False, warn=lambda m: None).path == altered
    ckpt.prune(tmp_path, keep=1)  # keeps the newest that passes the size check, drops older ones
    assert not (tmp_path / ".tmp-step-00000010").exists() and not good.exists()
    assert altered.exists() and truncated.exists() and partial.exists()


def test_evaluate_reports_perplexity_per_dataset_and_modality(data):
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, VOCAB.size).eval()
    sets = {
        "text-tokens": (data["text"], Holdout(0.2)),
        "image-caption": (data["image_caption"], Holdout(0.2)),
        "instruct": (data["instruct"], Holdout(None)),
    }
    res = evaluate(model, sets, VOCAB, seq_len=32, batch_size=4, max_samples=20)
    # a random model is near-uniform: perplexity close to the vocabulary size
    for name in sets:
        assert 0.5 * VOCAB.size < res[name]["ppl"] < 2 * VOCAB.size, (name, res[name])
    assert res["text-tokens"]["image_tokens"] == 0 and res["image-caption"]["image_tokens"] > 0
    # the instruct prompts are masked: only response tokens + </s> are scored (11 of 18 per sample)
    assert res["instruct"]["samples"] == 20 and res["instruct"]["tokens"] == 20 * 11
    # recompute one dataset by hand
    seqs = list(heldout_sequences("image-caption", data["image_caption"], Holdout(0.2), 32, 20))
    assert 0 < len(seqs) == res["image-caption"]["samples"]
    total, n = 0.0, 0
    with torch.no_grad():
        for _, toks, _ in seqs:
            t = torch.from_numpy(toks)[None]
            nll = torch.nn.functional.cross_entropy(model(t[:, :-1])[0], t[0, 1:], reduction="sum")
            total, n = total + nll.item(), n + len(toks) - 1
    assert res["image-caption"]["ppl"] == pytest.approx(math.exp(total / n), rel=1e-4)


def test_export_reloads_to_identical_logits(tmp_path):
    torch.manual_seed(0)
    cfg = {**TINY_MODEL, "tie_embeddings": True}
    model = build_model(cfg, VOCAB.size).eval()
    write_export(model, cfg, VOCAB, tmp_path, step=7)
    again, info = load_exported(tmp_path)
    assert info["step"] == 7 and info["vocab"]["fingerprint"] == VOCAB.fingerprint
    tokens = torch.randint(0, VOCAB.size, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(tokens), again(tokens))
    # the export is also a model checkpoint the model section can start from (instruction tuning)
    plain = {k: v for k, v in TINY_MODEL.items()}
    write_export(build_model(plain, VOCAB.size).eval(), plain, VOCAB, tmp_path / "b", step=3)
    cont = build_model({"checkpoint": str(tmp_path / "b" / "model.safetensors")}, VOCAB.size).eval()
    ref, _ = load_exported(tmp_path / "b")
    with torch.no_grad():
        assert torch.equal(cont(tokens), ref(tokens))


def test_dry_run_on_the_reference_config_sizes_the_run(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # an in-process run earlier in this worker sets it
    cfg = Config.load(REPO / "configs" / "train-reference.yaml")
    s = parse_settings(cfg)
    lines: list[str] = []
    out = dry_run(s, echo=lines.append)
    assert out["world_size"] == 256
    assert out["tokens_per_step"] == 2 * 4096 * 4 * 256 == 8_388_608  # "8M tokens"
    assert out["steps"] == 5960 and out["total_tokens"] == pytest.approx(50e9, rel=0.01)
    assert 15e9 < out["params"] < 20e9  # JAM-Cross on two 7B backbones: ~19B
    mem = out["memory_bytes"]
    assert mem["weights"] == 2 * out["params"] and mem["optimizer"] == pytest.approx(12 * out["params"] / 256)
    assert mem["total"] < 80 * 1024**3
    text = "\n".join(lines)
    for needle in ("parameters:", "memory per GPU:", "tokens per step:", "steps: 5,960"):
        assert needle in text


def test_memory_estimate_follows_the_zero_stages():
    p = 1_000_000
    by_stage = [memory_estimate(p, z, 4, 1, 16, None, None)["total"] for z in range(4)]
    assert by_stage == [16 * p, 4 * p + 12 * p / 4, 2 * p + 14 * p / 4, 16 * p / 4]


def test_config_errors_name_the_key(tmp_path, data):
    path = write_config(tmp_path / "c.yaml", data, tmp_path / "train", stpes=3)
    with pytest.raises(ConfigError, match="train.stpes"):
        parse_settings(Config.load(path))
    path = write_config(tmp_path / "c.yaml", data, tmp_path / "train", loader={"global_batch_size": 5})
    with pytest.raises(ConfigError, match="loader.global_batch_size.*micro-batch"):
        parse_settings(Config.load(path)).loader_config(1)

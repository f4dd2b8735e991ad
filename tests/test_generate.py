"""`jamtrain generate` on a small run laid out like the main job's (tokenizer/, vqvae/,
train/export/ with a demo-style JAM-Cross): valid PNGs, same seed -> same bytes, well-formed
`<boi> ... <eoi>` blocks, classifier-free guidance as defined, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from jamdata.image.vqvae import build_vqvae, save_checkpoint
from jamdata.text.tokenizer import TextTokenizer
from jamtrain.export import write_export
from jamtrain.generate import (
    GenerateError,
    Sampling,
    filter_logits,
    generate_image,
    generate_text,
    image_blocks,
    last_logits,
    unconditional_prompt,
)
from jamtrain.models import build_model
from jamtrain.sample_files import find_parts, load_parts

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_MODEL = {"preset": "tiny", "fusion": "cross", "n_layers": 2, "d_model": 48, "n_heads": 4, "max_seq_len": 256}
GRID = 4  # a 16x16-pixel VQ-VAE (the demo's tiny preset at resolution 16): 4x4 codes per image


def make_run(root: Path, sample_data: Path, seed: int = 0) -> Path:
    import sentencepiece as spm

    (root / "tokenizer").mkdir(parents=True)
    text = "\n".join(p.read_text(errors="ignore")[:20000] for p in sorted((sample_data / "text").rglob("*.txt"))[:5])
    (root / "corpus.txt").write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "tokenizer" / "tokenizer"),
        vocab_size=300,
        model_type="bpe",
        num_threads=1,
        minloglevel=2,
    )
    vocab = TextTokenizer(str(root / "tokenizer"), n_image_codes=256).vocab
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    torch.manual_seed(seed)
    params = build_vqvae("tiny-64px-f4").params
    params["ddconfig"]["resolution"] = 16
    save_checkpoint(build_vqvae(params), root / "vqvae")
    cfg = {**DEMO_MODEL, "text_rows": vocab.image_offset}
    model = build_model(cfg, vocab.size).eval()
    with torch.no_grad():  # gates open a little, so the cross blocks take part
        for blk in model.cross:
            blk.gate_t.fill_(0.5)
            blk.gate_i.fill_(0.5)
    write_export(model, cfg, vocab, root / "train" / "export", step=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_data) -> Path:
    return make_run(tmp_path_factory.mktemp("genrun"), sample_data)


@pytest.fixture(scope="module")
def loaded(run):
    return load_parts(find_parts(run))


def jamtrain(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / "jamtrain"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_writes_a_png_from_a_caption_and_the_same_seed_gives_the_same_bytes(run, tmp_path):
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        r = jamtrain(
            "generate",
            "--run",
            str(run),
            "--prompt",
            "a red circle on white",
            "--image",
            "--out",
            str(tmp_path / name),
            "--seed",
            seed,
            "--top-k",
            "50",
            "--guidance",
            "2.5",
        )
        assert r.returncode == 0, r.stdout + r.stderr
        outs.append(tmp_path / name)
    png = Image.open(outs[0] / "image-0.png")
    assert png.format == "PNG" and png.size == (16, 16) and png.mode == "RGB"
    rec = json.loads((outs[0] / "sample.json").read_text())
    vocab = load_parts(find_parts(run)).vocab
    toks = rec["tokens"]
    assert toks[:2] == [vocab.break_id, vocab.boi_id] and toks[-1] == vocab.eoi_id
    assert len(toks) == 2 + GRID * GRID + 1 and len(image_blocks(toks, vocab)[0]) == GRID * GRID
    assert rec["prompt_tokens"] and rec["sampling"]["guidance"] == 2.5
    assert (outs[0] / "image-0.png").read_bytes() == (outs[1] / "image-0.png").read_bytes()
    assert (outs[0] / "sample.json").read_bytes() == (outs[1] / "sample.json").read_bytes()
    assert json.loads((outs[2] / "sample.json").read_text())["tokens"] != toks


def test_text_continuation_keeps_image_blocks_well_formed(loaded):
    vocab = loaded.vocab
    prompt = loaded.tokenizer.encode("How to paint a circle")
    n = GRID * GRID
    for seed in range(3):
        out = generate_text(loaded.model, vocab, prompt, Sampling(seed=seed, temperature=1.5, max_new_tokens=16), n)
        assert len(out) <= 16 + n + 1
        blocks = image_blocks(out, vocab)  # raises on any malformed block
        assert all(len(b) == n for b in blocks)
        if not blocks:  # outside a block no image code is ever drawn
            assert all(t < vocab.image_offset for t in out)
    assert out == generate_text(loaded.model, vocab, prompt, Sampling(seed=2, temperature=1.5, max_new_tokens=16), n)
    # a prompt that ends inside an image block is continued to a whole image, then <eoi>
    opened = prompt + [vocab.break_id, vocab.boi_id, vocab.image_offset + 7]
    out = generate_text(loaded.model, vocab, opened, Sampling(seed=1, max_new_tokens=3), n)
    assert all(vocab.image_offset <= t < vocab.size for t in out[: n - 1]) and out[n - 1] == vocab.eoi_id
    assert [len(b) for b in image_blocks(opened + out, vocab)] == [n]


def test_without_a_vqvae_no_image_can_be_opened(loaded):
    vocab = loaded.vocab
    prompt = [vocab.break_id]
    for seed in range(2):
        out = generate_text(loaded.model, vocab, prompt, Sampling(seed=seed, temperature=2.0, max_new_tokens=12), 0)
        assert vocab.boi_id not in out and all(t < vocab.image_offset for t in out)
    with pytest.raises(GenerateError, match="no VQ-VAE"):
        generate_text(loaded.model, vocab, [vocab.boi_id], Sampling(), 0)


def test_guidance_combines_the_conditional_and_unconditional_streams(loaded):
    vocab, model = loaded.vocab, loaded.model
    caption = loaded.tokenizer.encode("a blue square")
    cond = caption + [vocab.break_id, vocab.boi_id]
    codes = slice(vocab.image_offset, vocab.size)
    lc = last_logits(model, [cond], vocab.pad_id)[0, codes]
    lu = last_logits(model, [unconditional_prompt(vocab)], vocab.pad_id)[0, codes]
    both = last_logits(model, [cond, unconditional_prompt(vocab)], vocab.pad_id)[:, codes]  # left-padded batch
    torch.testing.assert_close(both[0], lc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], lu, atol=1e-5, rtol=1e-5)
    for g in (1.0, 3.0):
        first = generate_image(model, vocab, caption, Sampling(temperature=0, guidance=g), 1)[0]
        assert first == int(torch.argmax(lu + g * (lc - lu)))
    assert (lc - lu).abs().max() > 0  # the caption matters, so guidance is not a no-op


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [False, False, False, True]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [False, True, True, True]
    with pytest.raises(GenerateError, match="--top-p"):
        Sampling(top_p=0)


def test_mistakes_end_in_one_line(run, tmp_path, sp_model_path):
    r = jamtrain("generate", "--run", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "no model.json" in r.stderr and "Traceback" not in r.stderr
    r = jamtrain(
        "generate", "--run", str(run), "--prompt", "x", "--out", str(tmp_path / "o"), "--tokenizer", str(sp_model_path)
    )
    assert r.returncode != 0 and "is not the tokenizer of" in r.stderr and "Traceback" not in r.stderr
    r = jamtrain("generate", "--run", str(run), "--prompt", "x", "--out", str(tmp_path / "o"), "--top-p", "2")
    assert r.returncode != 0 and "--top-p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr


def test_main_job_sample_is_a_picture_in_the_run_directory(run):
    from jamtrain.sample_files import STAGE_PROMPT, stage_sample

    lines = stage_sample(run, run / "train", seed=5)
    assert len(lines) == 1 and lines[0].startswith("generated sample (picture"), lines
    rec = json.loads((run / "generated" / "sample.json").read_text())
    assert rec["prompt"] == STAGE_PROMPT and rec["images"] == ["image-0.png"]
    assert Image.open(run / "generated" / "image-0.png").size == (16, 16)
    assert stage_sample(run / "nowhere", run / "nowhere")[0].startswith("no generated sample:")

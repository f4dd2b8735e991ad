"""Stage `tokenizer`: clean documents -> a SentencePiece BPE model (LLaMA settings), or an existing
`.model` loaded and checked, written as the `tokenizer` dataset whose joint vocabulary (text
pieces, special tokens, image codes) every later dataset is stamped with.

No Beam: training reads a byte budget of clean text per source (`text.tokenizer.train_bytes`, split
by `text.sample.shares`) in dataset order, so the model is a function of the clean dataset alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from jamdata.config import Config
from jamdata.io import exists, join
from jamdata.manifest import MANIFEST, output_dir, read_manifest
from jamdata.text import sampling
from jamdata.text.tokenizer import TextTokenizer, train_sentencepiece, write_tokenizer_dataset
from jamdata.settings import load_settings, setting
from jamdata.stage import Stage, StageContext
from pipelines.clean_input import clean_shards, read_texts
from pipelines.text_sample_settings import LLAMA_SHARES, n_image_codes


@dataclass(frozen=True)
class TokenizerSettings:
    """The `text.tokenizer` section (docs/text-sample.md): train a SentencePiece BPE or load one."""

    model: str | None = setting(None, "an existing SentencePiece .model to load instead of training")
    vocab_size: int = setting(32000, "text pieces of a trained model", lo=300)
    train_bytes: int = setting(200_000_000, "text bytes sampled (by text.sample.shares) to train on", lo=1)
    threads: int = setting(1, "SentencePiece training threads", lo=1)
    input: str | None = setting(None, "text-clean dataset to train on (default: the run's)")


def tokenizer_sample(files: dict[str, list[str]], shares: dict[str, float], max_bytes: int) -> Iterator[str]:
    """Training text: per source a byte budget by share, documents in file order (the clean
    dataset is itself deterministic, so this sample is too)."""
    norm = sampling.normalise_shares(
        {s: shares.get(s, 0.0) for s in files} if any(shares.get(s) for s in files) else {s: 1.0 for s in files}
    )
    for source, paths in files.items():
        budget = int(max_bytes * norm.get(source, 0.0))
        for path in paths:
            if budget <= 0:
                break
            for text in read_texts(path, columns=("text",)).column("text").to_pylist():
                yield text
                budget -= len(text.encode("utf-8"))
                if budget <= 0:
                    break


def run_tokenizer_stage(ctx) -> list[str]:
    cfg: Config = ctx.config
    sec = cfg.section("text.tokenizer")
    t = load_settings(TokenizerSettings, sec)
    # without a vqvae section the joint vocabulary assumes DEFAULT_IMAGE_CODES: said, not silent
    assumed = {} if cfg.has("vqvae.codebook_size") else {"image_codes_assumed": True}
    codes = n_image_codes(cfg)
    out = str(ctx.path("tokenizer"))
    model = t.model
    if model:
        tok = TextTokenizer(model, codes)  # fails naming the file when it is missing or not a model
        check = tokenizer_check(tok.sp, t.input or str(ctx.path("text-clean")))
        with output_dir(out):
            vocab = write_tokenizer_dataset(
                out,
                tok.proto,
                codes,
                sec.to_dict(),
                {"origin": "loaded", "model": model, **check, **assumed},
                inputs=[model],
            )
        return [
            f"loaded {model}: {vocab.text_size} pieces, joint vocab {vocab.size} ({vocab.fingerprint})",
            *tokenizer_check_lines(read_manifest(out)),
        ]
    clean = t.input or str(ctx.path("text-clean"))
    files = clean_shards(clean)
    shares = cfg.get("text.sample.shares", dict, default=LLAMA_SHARES)
    vocab_size, train_bytes, threads = t.vocab_size, t.train_bytes, t.threads
    proto = train_sentencepiece(tokenizer_sample(files, shares, train_bytes), vocab_size, train_bytes, threads)
    with output_dir(out):
        vocab = write_tokenizer_dataset(
            out,
            proto,
            codes,
            sec.to_dict(),
            {"origin": "trained", "train_bytes": train_bytes, **assumed},
            inputs=[clean],
        )
    return [
        f"trained BPE tokenizer: {vocab.text_size} pieces, joint vocab {vocab.size} ({vocab.fingerprint})",
        *tokenizer_check_lines(read_manifest(out)),
    ]


def tokenizer_check(sp, clean: str, max_bytes: int = 2_000_000) -> dict:
    """`unk_share`: the share of `<unk>` tokens on the first clean documents of every source (up
    to `max_bytes` of text); {} when there is no clean dataset to measure on."""
    from jamdata.text.tokenizer import unk_share

    if not exists(join(clean, MANIFEST)):
        return {}
    files = clean_shards(clean)
    sample = list(tokenizer_sample(files, {s: 1.0 for s in files}, max_bytes))
    share = unk_share(sp, sample)
    return {} if share is None else {"unk_share": round(share, 6), "unk_sample_documents": len(sample)}


def tokenizer_check_lines(manifest: dict) -> list[str]:
    """Console warnings for a tokenizer that loses text (see jamdata.stats.warnings)."""
    from jamdata.stats.warnings import format_warnings, tokenizer_warnings

    return format_warnings(tokenizer_warnings("tokenizer", manifest))


def stage_settings(ctx: StageContext) -> dict:
    return {
        "seed": ctx.seed,
        "tokenizer": load_settings(TokenizerSettings, ctx.config.section("text.tokenizer")),
        "shares": ctx.config.get("text.sample.shares", dict, default=LLAMA_SHARES),
        "image_codes": n_image_codes(ctx.config),
    }


STAGE = Stage("tokenizer", run_tokenizer_stage, outputs=("tokenizer",), inputs=("text-clean",), settings=stage_settings)

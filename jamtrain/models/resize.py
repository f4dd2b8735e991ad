"""Vocabulary extension: append rows to a backbone's token table (and untied output head).

A LLaMA imported with its own tokenizer has exactly the SentencePiece pieces as rows; the joint
vocabulary (jamdata/vocab.py) keeps those ids and appends the special tokens and the image codes,
so extending is appending rows. The existing rows are never changed, so every old token's logit
on an old-token input stays what it was.

New rows are `mean + noise · std_dim · N(0, 1)` over the existing rows: the diagonal form of
Hewitt (2021, "Initializing new word embeddings for pretrained language models", N(mean, 1e-5·Σ)),
which Hugging Face `resize_token_embeddings(mean_resizing=True)` also follows. An output row at the
mean gives a new token the average logit, so the pretrained distribution over the old tokens barely
moves; the small seeded noise only makes the new rows distinct (and the result reproducible, which
a resumed training run relies on when it rebuilds the model)."""

from __future__ import annotations

from dataclasses import replace

import torch

from jamdata.errors import ModelError
from jamtrain.models.backbone import Backbone
from jamtrain.models.config import BackboneConfig

NOISE = 3e-3  # ≈ sqrt(1e-5): Hewitt's covariance scale, as a per-dimension std factor

# The state-dict keys that have one row per token (the head only when untied).
ROW_KEYS = ("tok_emb.weight", "head.weight")


def new_rows(weight: torch.Tensor, n: int, generator: torch.Generator, noise: float = NOISE) -> torch.Tensor:
    """`n` rows at the mean of `weight`'s rows plus Gaussian noise of `noise` × each dimension's
    std; statistics in fp32, the result in `weight`'s dtype."""
    w = weight.detach().float().cpu()
    mean = w.mean(0)
    std = w.std(0) if w.shape[0] > 1 else torch.zeros_like(mean)
    z = torch.randn(n, w.shape[1], generator=generator, dtype=torch.float32)
    return (mean + noise * std * z).to(weight.dtype)


def extend_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig, vocab_size: int | None, seed: int = 0, noise: float = NOISE
) -> tuple[BackboneConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of the backbone grown to `vocab_size` rows. The token table gets its
    new rows first, then the untied head, from one generator seeded with `seed`; other tensors are
    passed through untouched. Growing to the current size returns the inputs as they are."""
    if vocab_size is None:
        raise ModelError("give the vocabulary to grow to (--vocab or --vocab-size)")
    if noise < 0:
        raise ModelError(f"noise must be >= 0, got {noise}")
    old = cfg.vocab_size
    if vocab_size < old:
        raise ModelError(
            f"cannot shrink the vocabulary from {old} to {vocab_size} rows "
            "(only appending rows keeps the existing token ids)"
        )
    if vocab_size == old:
        return cfg, dict(state)
    gen = torch.Generator().manual_seed(int(seed))
    out = dict(state)
    for key in ROW_KEYS:
        if key not in state:
            if key == "tok_emb.weight" or not cfg.tie_embeddings:
                raise ModelError(f"missing tensor {key!r}: not a backbone state dict")
            continue
        w = state[key]
        if w.shape[0] != old:
            raise ModelError(f"{key} has {w.shape[0]} rows, the config says vocab_size {old}")
        out[key] = torch.cat([w.detach(), new_rows(w, vocab_size - old, gen, noise).to(w.device)])
    return replace(cfg, vocab_size=int(vocab_size)), out


def extend_vocab(model: Backbone, vocab_size: int, seed: int = 0, noise: float = NOISE) -> Backbone:
    """A backbone like `model` with `vocab_size` rows (see `extend_state`). Tensors other than the
    token table and head are shared with `model`, not copied, so a 7B parent is not duplicated."""
    if not isinstance(model, Backbone):
        raise ModelError(
            f"only a single backbone can grow its vocabulary, not a {type(model).__name__} "
            "(extend the parents before fusing them)"
        )
    cfg, state = extend_state(model.state_dict(), model.cfg, vocab_size, seed, noise)
    if cfg is model.cfg:
        return model
    with torch.device("meta"):
        grown = Backbone(cfg, model.activation_checkpointing)
    grown.load_state_dict(state, assign=True)
    return grown.train(model.training)


def check_text_rows(model_rows: int, vocab) -> None:
    """Refuse to extend a model whose rows are not exactly the joint vocabulary's text pieces:
    then its token ids and the data's would disagree (another SentencePiece model)."""
    if model_rows != vocab.text_size:
        raise ModelError(
            f"model has {model_rows} embedding rows but the joint vocabulary has {vocab.text_size} "
            "text pieces: tokenize the data with the model's own tokenizer.model so the text ids agree"
        )

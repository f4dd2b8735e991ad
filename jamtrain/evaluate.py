"""Validation perplexity per dataset on held-out data (the paper's MS-COCO PPL-style metric).

Each held-out sample is scored on its own (no packing, no context from other samples): a text
document in windows of `seq_len` tokens, an image–caption sample as its joint token sequence
(caption and image tokens), an interleaved sample on its loss-bearing tokens only. Perplexity is
exp(total NLL / scored tokens), with text and image tokens also reported separately.

Held-out data: with `train.eval.holdout_fraction` f, a sample of a training dataset is held out when the
stable hash of (dataset name, sample key) falls under f; the training loop masks those samples out
of the loss (jamtrain.loss.mask_heldout), so the model never learns from them. Datasets listed
under `train.eval.datasets` are evaluated whole (a separate validation set).

Damaged shards follow the loader's policy (`loader.verify`, `loader.on_corrupt`): each shard is
checked against its manifest as the loader checks it, and with `on_corrupt: skip` a shard that
fails the check (or cannot be read to the end) is logged and left out, as training left it out;
with `fail` evaluation stops naming it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from jamdata.formats.megatron import IndexedDataset, IndexedDatasetError
from jamdata.formats.wds import ShardError, iter_samples
from jamdata.io import stable_hash
from jamdata.loader.sources import BadShard, ShardRef, _verify
from jamdata.manifest import read_manifest
from jamdata.vocab import JointVocab

log = logging.getLogger(__name__)
HOLDOUT_SEED = 0x6A616D  # fixed: the held-out set must not move when the training seed changes
# what reading a damaged shard raises (a memory-mapped .bin cut short raises ValueError)
READ_ERRORS = (BadShard, ShardError, IndexedDatasetError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class ShardPolicy:
    """The loader's handling of damaged shards (`loader.verify`, `loader.on_corrupt`)."""

    verify: str = "sha256"  # sha256 | size | none
    on_corrupt: str = "skip"  # skip | fail


_checked: dict[tuple, str | None] = {}  # (root, unit, files, mode) -> reason it failed; verified once per process


@dataclass(frozen=True)
class Holdout:
    fraction: float | None = None  # None: the whole dataset is held out

    def is_heldout(self, dataset: str, key: str) -> bool:
        if self.fraction is None:
            return True
        return stable_hash(dataset, key, seed=HOLDOUT_SEED) % 1_000_000 < self.fraction * 1_000_000


def _units(manifest: dict) -> list[str]:
    """Shards in manifest order: `.idx`/`.bin` pairs count once (by prefix), tars by path."""
    units: list[str] = []
    for s in manifest["shards"]:
        p = s["path"]
        unit = p[:-4] if p.endswith((".bin", ".idx")) else p if p.endswith(".tar") else None
        if unit is not None and unit not in units:
            units.append(unit)
    return units


def heldout_sequences(
    name: str,
    root: str | Path,
    holdout: Holdout,
    seq_len: int,
    max_samples: int | None = None,
    policy: ShardPolicy = ShardPolicy(),
    skipped: list[str] | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key, tokens int64, target mask bool) of held-out samples in manifest order. Keys are the
    loader's sample keys (`<shard prefix>:<document>` for text tokens, the tar sample key).
    Damaged shards are handled by `policy`; the ones skipped are appended to `skipped`."""
    root = str(root).rstrip("/")
    manifest = read_manifest(root)
    n = 0
    for unit in _units(manifest):
        samples = _unit_samples(
            manifest["kind"], f"{root}/{unit}", unit, seq_len, lambda k: holdout.is_heldout(name, k)
        )
        for key, tokens, mask in _guarded(samples, root, unit, manifest, policy, skipped):
            yield key, tokens, mask
            n += 1
            if max_samples is not None and n >= max_samples:
                return


def _shard_ref(manifest: dict, unit: str) -> ShardRef:
    files = tuple(
        (s["path"], s["bytes"], s["sha256"])
        for s in manifest["shards"]
        if s["path"] in (unit, unit + ".idx", unit + ".bin")
    )
    return ShardRef(unit, 0, files)


def _guarded(
    samples: Iterator, root: str, unit: str, manifest: dict, policy: ShardPolicy, skipped: list[str] | None
) -> Iterator:
    """The unit's samples after the loader's manifest check; a damaged unit is skipped (with the
    samples before the damage, as the loader keeps them) or fails, as the policy says."""
    try:
        if policy.verify != "none":
            ref = _shard_ref(manifest, unit)
            key = (root, unit, ref.files, policy.verify)
            if key not in _checked:
                try:
                    _verify(root, ref, policy.verify)
                    _checked[key] = None
                except BadShard as e:
                    _checked[key] = str(e)
            if _checked[key] is not None:
                raise BadShard(_checked[key])
        yield from samples
    except READ_ERRORS as e:
        if policy.on_corrupt == "fail":
            raise ShardError(f"{e} (evaluation; loader.on_corrupt=fail)") from None
        log.error("%s (left out of evaluation; loader.on_corrupt=skip)", e)
        if skipped is not None:
            skipped.append(f"{root}/{unit}")


def _unit_samples(
    kind: str, path: str, unit: str, seq_len: int, keep: Callable[[str], bool]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    if kind == "text_tokens":
        ds = IndexedDataset(path)
        for i in range(len(ds)):
            key = f"{unit}:{i}"
            if not keep(key):
                continue
            doc = np.asarray(ds[i], dtype=np.int64)
            for start in range(0, len(doc), seq_len):
                window = doc[start : start + seq_len]
                if len(window) >= 2:
                    yield key, window, np.ones(len(window), dtype=bool)
        return
    for sample in iter_samples(path, on_duplicate="skip"):
        if "tokens.npy" not in sample.fields or not keep(sample.key):
            continue
        fields = sample.decoded()
        tokens = np.asarray(fields["tokens.npy"], dtype=np.int64)[:seq_len]
        if "loss_mask.npy" in fields:
            mask = np.asarray(fields["loss_mask.npy"]).astype(bool)[:seq_len]
        else:
            mask = np.ones(len(tokens), dtype=bool)
        if len(tokens) >= 2:
            yield sample.key, tokens, mask


def collate(seqs: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to one length in the loader's batch layout (segment -1 and mask False on padding)."""
    width = max(len(t) for t, _ in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    seg = torch.full((len(seqs), width), -1, dtype=torch.int32)
    for i, (t, m) in enumerate(seqs):
        tokens[i, : len(t)] = torch.from_numpy(t)
        mask[i, : len(t)] = torch.from_numpy(m)
        seg[i, : len(t)] = 0
    return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg}


@torch.no_grad()
def score_batch(
    forward: Callable[..., torch.Tensor], batch: dict[str, torch.Tensor], vocab: JointVocab, device: torch.device
) -> torch.Tensor:
    """[nll_text, n_text, nll_image, n_image] summed over the batch's target tokens."""
    from jamtrain.loss import token_nll

    tokens = batch["tokens"].to(device).long()
    logits = forward(tokens[:, :-1], segment_ids=batch["segment_ids"][:, :-1].to(device))
    nll = token_nll(logits, tokens[:, 1:])
    mask = batch["loss_mask"][:, 1:].to(device)
    image = tokens[:, 1:] >= vocab.image_offset
    out = torch.zeros(4, dtype=torch.float64, device=device)
    for j, sel in enumerate((mask & ~image, mask & image)):
        out[2 * j] = nll[sel].double().sum()
        out[2 * j + 1] = sel.sum()
    return out


def summarize(sums: torch.Tensor) -> dict:
    nll_t, n_t, nll_i, n_i = (float(x) for x in sums.cpu())
    n = n_t + n_i

    def ppl(total: float, count: float) -> float | None:
        return math.exp(min(total / count, 700.0)) if count else None

    return {
        "tokens": int(n),
        "loss": (nll_t + nll_i) / n if n else None,
        "ppl": ppl(nll_t + nll_i, n),
        "text_tokens": int(n_t),
        "text_ppl": ppl(nll_t, n_t),
        "image_tokens": int(n_i),
        "image_ppl": ppl(nll_i, n_i),
    }


def dummy_batch(vocab: JointVocab) -> dict[str, torch.Tensor]:
    """One two-token row whose loss mask is all False: a forward pass that adds nothing to the sums."""
    pad = np.full(2, vocab.pad_id, dtype=np.int64)
    return collate([(pad, np.zeros(2, dtype=bool))], 2, vocab.pad_id)


def evaluate(
    forward: Callable[..., torch.Tensor],
    datasets: dict[str, tuple[str, Holdout]],
    vocab: JointVocab,
    seq_len: int,
    batch_size: int = 8,
    max_samples: int | None = 256,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    policy: ShardPolicy = ShardPolicy(),
) -> dict[str, dict]:
    """Perplexity per dataset. Collective when distributed: samples are split round-robin over
    ranks and the sums (NLL and token counts, never per-rank means) all-reduced, so every rank
    returns the same figures as one rank would.

    Every rank runs the same number of forward passes, with no communication to agree on it
    (ZeRO-3 gathers parameters collectively inside each one, so a rank with one pass more would
    hang the others): every rank reads the same held-out stream, and the samples are scored in
    rounds of `batch_size` x `world_size`, one forward pass per rank per round; in a last partial
    round a rank with no sample left runs a dummy batch whose targets are all masked. Damaged
    shards are handled as `policy` (the loader's settings) says; `skipped_shards` counts those
    left out."""
    device = torch.device(device)
    results = {}
    round_size = batch_size * world_size
    for name, (root, holdout) in datasets.items():
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        samples = 0
        skipped: list[str] = []
        for i, (_key, tokens, mask) in enumerate(
            heldout_sequences(name, root, holdout, seq_len, max_samples, policy, skipped)
        ):
            samples += 1
            if i % world_size == rank:
                pending.append((tokens, mask))
            if samples % round_size == 0:  # every rank holds exactly batch_size samples
                sums += score_batch(forward, collate(pending, seq_len, vocab.pad_id), vocab, device)
                pending = []
        if samples % round_size:
            batch = collate(pending, seq_len, vocab.pad_id) if pending else dummy_batch(vocab)
            sums += score_batch(forward, batch, vocab, device)
        if world_size > 1:
            torch.distributed.all_reduce(sums)
        results[name] = {"samples": samples, **summarize(sums), "skipped_shards": len(skipped)}
    return results

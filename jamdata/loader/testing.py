"""Small synthetic datasets in exactly the layouts the pipelines write (Megatron text tokens,
image-caption and interleaved tars, each with its manifest): for tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jamdata.formats.megatron import IndexedDatasetWriter
from jamdata.formats.wds import TarShardWriter
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.vocab import JointVocab

VOCAB = JointVocab(text_size=1000, text_model_sha256="0" * 64, n_image_codes=64)


def make_text_tokens(
    root: str | Path,
    docs_per_shard: dict[str, list[int]],
    seed: int = 0,
    min_len: int = 5,
    max_len: int = 300,
    vocab: JointVocab = VOCAB,
    lengths: list[int] | None = None,
) -> Path:
    """`docs_per_shard`: source -> document count of each of its shards. Each document is random
    text ids followed by </s>."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    shards = []
    for source, counts in sorted(docs_per_shard.items()):
        for i, n in enumerate(counts):
            rel = f"{source}/part-{i:05d}"
            (root / source).mkdir(parents=True, exist_ok=True)
            w = IndexedDatasetWriter(str(root / rel), vocab.dtype)
            for _ in range(n):
                k = int(lengths[rng.integers(len(lengths))]) if lengths else int(rng.integers(min_len, max_len))
                w.add_document(np.append(rng.integers(0, vocab.text_size, k - 1), vocab.eos_id))
            docs, toks = w.finalize()
            shards.append(describe_shard(str(root), rel + ".idx", records=docs, tokens=toks, group=source))
            shards.append(describe_shard(str(root), rel + ".bin", group=source))
    write_manifest(str(root), build_manifest("text_tokens", shards, {"test": True}, vocab))
    return root


def image_caption_tokens(rng: np.random.Generator, vocab: JointVocab, caption_len: int, grid: int) -> np.ndarray:
    caption = rng.integers(0, vocab.text_size, caption_len)
    codes = vocab.image_ids(rng.integers(0, vocab.n_image_codes, grid * grid))
    return np.concatenate([caption, [vocab.break_id, vocab.boi_id], codes, [vocab.eoi_id, vocab.eos_id]]).astype(
        np.int32
    )


def make_tars(
    root: str | Path,
    kind: str,
    samples_per_shard: list[int],
    seed: int = 0,
    grid: int = 4,
    caption_len: tuple[int, int] = (3, 20),
    vocab: JointVocab = VOCAB,
    prefix: str = "s",
    images: tuple[int, int] = (1, 3),
) -> Path:
    """Image-caption (`kind="image_caption"`) or interleaved (`"interleaved"`: several images,
    loss mask 0 on the prompt) webdataset tars with their manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for i, n in enumerate(samples_per_shard):
        rel = f"part-{i:05d}.tar"
        tokens_total = 0
        with TarShardWriter(str(root / rel)) as w:
            for j in range(n):
                key = f"{prefix}{i:03d}x{j:05d}"
                if kind == "image_caption":
                    toks = image_caption_tokens(rng, vocab, int(rng.integers(*caption_len)), grid)
                    w.write(key, {"tokens.npy": toks, "json": {"caption": key, "order": j}})
                else:
                    parts = []
                    for _ in range(int(rng.integers(images[0], images[1] + 1))):
                        parts.append(image_caption_tokens(rng, vocab, int(rng.integers(*caption_len)), grid)[:-1])
                    toks = np.concatenate(parts + [np.array([vocab.eos_id], np.int32)]).astype(np.int32)
                    mask = np.ones(len(toks), np.uint8)
                    mask[: int(rng.integers(1, 5))] = 0
                    w.write(key, {"tokens.npy": toks, "loss_mask.npy": mask, "json": {"segments": len(parts)}})
                tokens_total += len(toks)
        shards.append(describe_shard(str(root), rel, records=n, tokens=tokens_total))
    write_manifest(str(root), build_manifest(kind, shards, {"test": True}, vocab))
    return root

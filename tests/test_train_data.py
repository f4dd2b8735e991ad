"""Small real datasets (Megatron text tokens, image-caption and interleaved tars, with manifests) and
a config for the training tests. Token streams follow simple rules so that the loss can fall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from jamdata.formats.megatron import IndexedDatasetWriter
from jamdata.formats.wds import TarShardWriter
from jamdata.manifest import build_manifest, describe_shard, write_manifest
from jamdata.vocab import JointVocab

VOCAB = JointVocab(text_size=96, text_model_sha256="0" * 64, n_image_codes=32)
REPO = Path(__file__).resolve().parent.parent


def _text(rng: np.random.Generator, n: int) -> np.ndarray:
    start, step = int(rng.integers(0, VOCAB.text_size)), int(rng.integers(1, 4))
    return (start + step * np.arange(n)) % VOCAB.text_size


def write_datasets(root: Path, n_text: int = 160, n_images: int = 64, n_instruct: int = 32) -> dict[str, str]:
    rng = np.random.default_rng(7)
    out: dict[str, str] = {}
    # text tokens: two sources, one .bin/.idx each
    d = root / "text-tokens"
    shards = []
    for src in ("web", "wiki"):
        (d / src).mkdir(parents=True, exist_ok=True)
        w = IndexedDatasetWriter(str(d / src / "part-00000"), VOCAB.dtype)
        for _ in range(n_text // 2):
            w.add_document(np.append(_text(rng, int(rng.integers(8, 60))), VOCAB.eos_id))
        docs, toks = w.finalize()
        shards += [
            describe_shard(str(d), f"{src}/part-00000.idx", docs, toks, src),
            describe_shard(str(d), f"{src}/part-00000.bin", None, None, src),
        ]
    write_manifest(str(d), build_manifest("text_tokens", shards, {}, VOCAB))
    out["text"] = str(d)
    # image-caption: caption, <boi> codes <eoi>
    d = root / "image-caption"
    d.mkdir(parents=True, exist_ok=True)
    shards = []
    for part in range(2):
        rel = f"part-{part:05d}.tar"
        n, toks = 0, 0
        with TarShardWriter(str(d / rel)) as w:
            for i in range(n_images // 2):
                code = int(rng.integers(0, VOCAB.n_image_codes))
                codes = (code + np.arange(16)) % VOCAB.n_image_codes
                caption = _text(rng, int(rng.integers(4, 12)))
                tokens = np.concatenate(
                    [caption, [VOCAB.break_id, VOCAB.boi_id], VOCAB.image_ids(codes), [VOCAB.eoi_id, VOCAB.eos_id]]
                ).astype(np.int32)
                w.write(
                    f"img{part}x{i:04d}",
                    {
                        "json": {"caption": "c", "order": i},
                        "image_codes.npy": codes.reshape(4, 4).astype(np.uint16),
                        "caption_ids.npy": caption.astype(np.int32),
                        "tokens.npy": tokens,
                    },
                )
                n, toks = n + 1, toks + len(tokens)
        shards.append(describe_shard(str(d), rel, n, toks))
    write_manifest(str(d), build_manifest("image_caption", shards, {}, VOCAB))
    out["image_caption"] = str(d)
    # interleaved: prompt (masked) then response
    d = root / "instruct"
    d.mkdir(parents=True, exist_ok=True)
    n, toks = 0, 0
    with TarShardWriter(str(d / "part-00000.tar")) as w:
        for i in range(n_instruct):
            prompt, resp = _text(rng, 6), _text(rng, 10)
            tokens = np.concatenate([[VOCAB.bos_id], prompt, [VOCAB.break_id], resp, [VOCAB.eos_id]]).astype(np.int32)
            mask = np.concatenate([np.zeros(len(prompt) + 2), np.ones(len(resp) + 1)]).astype(np.uint8)
            w.write(f"ins{i:04d}", {"json": {"segments": []}, "tokens.npy": tokens, "loss_mask.npy": mask})
            n, toks = n + 1, toks + len(tokens)
    write_manifest(
        str(d), build_manifest("interleaved", [describe_shard(str(d), "part-00000.tar", n, toks)], {}, VOCAB)
    )
    out["instruct"] = str(d)
    return out


TINY_MODEL = {"preset": "tiny", "n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 64}


def write_config(
    path: Path,
    datasets: dict[str, str],
    out_dir: Path,
    ds_json: str = "configs/deepspeed-cpu.json",
    mixture: dict | None = None,
    loader: dict | None = None,
    **train,
) -> Path:
    mixture = mixture or {"text-tokens": 0.5, "image-caption": 0.5}
    cfg = {
        "run": {"out_dir": str(Path(datasets["text"]).parent), "seed": 1},
        "loader": {"mixture": mixture, "seq_len": 32, "shuffle_block": 16, "seed": 3, **(loader or {})},
        "train": {
            "model": TINY_MODEL,
            "deepspeed": str(REPO / ds_json),
            "out_dir": str(out_dir),
            "steps": 6,
            "lr": 3e-3,
            "warmup_steps": 2,
            "save_every": 2,
            "eval": {"max_samples": 8, "holdout_fraction": 0.2},
            **train,
        },
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

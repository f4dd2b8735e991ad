"""What `jamtrain generate` reads and writes: the model, tokenizer and VQ-VAE of a run, and a
generated sample as files (`sample.json`, `sample.txt`, one `image-N.png` per image block).

A run is found from one directory: a main-job run directory (`train/export/`, `tokenizer/`,
`vqvae/`), a training output directory (`export/`; tokenizer and VQ-VAE beside it or given), or an
export directory itself (`model.json` + `model.safetensors`). `--tokenizer` / `--vqvae` name them
explicitly. The tokenizer must be the one the model's joint vocabulary was built from (its sha256),
and the VQ-VAE's codebook must be the vocabulary's image codes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from jamdata.vocab import JointVocab
from jamtrain.generate import GenerateError, Sampling, generate_image, generate_text, image_blocks

if TYPE_CHECKING:  # loaded only when a run has them
    from jamdata.image.vqvae_net import VQModel
    from jamdata.text.tokenizer import TextTokenizer


@dataclass
class Parts:
    export: Path
    tokenizer: str | None
    vqvae: str | None


def find_parts(run: str | Path, tokenizer: str | None = None, vqvae: str | None = None) -> Parts:
    run = Path(run)
    for export in (run, run / "export", run / "train" / "export"):
        if (export / "model.json").is_file():
            break
    else:
        raise GenerateError(
            f"{run}: no model.json in it, in export/ or in train/export/ "
            "(pass a run directory, a training output directory or an export directory)"
        )
    roots = [export.parent.parent, export.parent, run]  # main-job run dir, then training dir, then the argument

    def beside(name: str, file: str) -> str | None:
        return next((str(r / name) for r in roots if (r / name / file).is_file()), None)

    return Parts(export, tokenizer or beside("tokenizer", "tokenizer.model"), vqvae or beside("vqvae", "vqvae.ckpt"))


@dataclass
class Loaded:
    model: torch.nn.Module
    vocab: JointVocab
    tokenizer: TextTokenizer | None
    vqvae: VQModel | None
    source: str = ""

    def grid(self) -> tuple[int, int]:
        if self.vqvae is None:
            raise GenerateError("no VQ-VAE for this run (pass --vqvae DIR): images cannot be generated or decoded")
        return self.vqvae.grid()


def load_parts(parts: Parts) -> Loaded:
    from jamtrain.export import load_exported

    model, info = load_exported(parts.export)
    vocab = JointVocab.from_dict(info["vocab"])
    tok = None
    if parts.tokenizer:
        from jamdata.text.tokenizer import TextTokenizer

        tok = TextTokenizer(parts.tokenizer, vocab.n_image_codes)
        if tok.vocab.text_model_sha256 != vocab.text_model_sha256:
            raise GenerateError(
                f"{tok.path} is not the tokenizer of {parts.export} (the model's joint vocabulary "
                "was built from another SentencePiece model)"
            )
    vq = None
    if parts.vqvae:
        from jamdata.image.vqvae import load_vqvae

        vq = load_vqvae(parts.vqvae)
        if vq.n_embed != vocab.n_image_codes:
            raise GenerateError(
                f"{parts.vqvae}: codebook of {vq.n_embed} codes, but the model's vocabulary has "
                f"{vocab.n_image_codes} image codes"
            )
    return Loaded(model, vocab, tok, vq, str(parts.export))


def prompt_ids(loaded: Loaded, text: str | None, ids: list[int] | None) -> list[int]:
    if ids is not None:
        return list(ids)
    if loaded.tokenizer is None:
        raise GenerateError("no tokenizer for this run (pass --tokenizer FILE_OR_DIR, or --prompt-ids)")
    return list(loaded.tokenizer.encode(text or ""))


def render(tokens: list[int], loaded: Loaded) -> str:
    """Text pieces decoded, special tokens by name, each image block as `<image N>`."""
    parts, run, n_img, inside = [], [], 0, False
    for t in tokens:
        if inside:
            inside = t != loaded.vocab.eoi_id
            if not inside:
                parts.append(f"<image {n_img}>")
                n_img += 1
            continue
        if t < loaded.vocab.text_size:
            run.append(t)
            continue
        if run:
            parts.append(_text(run, loaded))
            run = []
        if t == loaded.vocab.boi_id:
            inside = True
        else:
            parts.append(loaded.vocab.token_name(t))
    if run:
        parts.append(_text(run, loaded))
    return "".join(parts)


def _text(ids: list[int], loaded: Loaded) -> str:
    return loaded.tokenizer.decode(ids) if loaded.tokenizer is not None else " ".join(f"<text:{i}>" for i in ids)


def decode_image(codes: list[int], loaded: Loaded) -> np.ndarray:
    from jamdata.image.preprocess import to_uint8_image

    h, w = loaded.grid()
    assert loaded.vqvae is not None  # grid() refuses a run without one
    grid = torch.tensor(codes, dtype=torch.long).view(1, h, w)
    return to_uint8_image(loaded.vqvae.decode(grid)[0].float().numpy())


def generate_sample(
    loaded: Loaded,
    out: str | Path,
    s: Sampling,
    prompt: str | None = None,
    ids: list[int] | None = None,
    image: bool = False,
) -> list[Path]:
    """Generate one sample into the directory `out`; returns the files written."""
    from PIL import Image

    from jamdata.image.contact_sheet import save_png
    from jamdata.io import atomic_write

    vocab = loaded.vocab
    prompt_tokens = prompt_ids(loaded, prompt, ids)
    n_codes = loaded.grid()[0] * loaded.grid()[1] if (image or loaded.vqvae is not None) else 0
    if image:
        codes = generate_image(loaded.model, vocab, prompt_tokens, s, n_codes)
        new = [vocab.break_id, vocab.boi_id] + [c + vocab.image_offset for c in codes] + [vocab.eoi_id]
    else:
        if loaded.vqvae is None:  # no way to decode an image: the model may not open one
            n_codes = 0
        new = generate_text(loaded.model, vocab, prompt_tokens, s, n_codes)
    blocks = image_blocks(prompt_tokens + new, vocab)  # the prompt may open (or hold) images too
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, codes in enumerate(blocks):
        path = out / f"image-{i}.png"
        save_png(Image.fromarray(decode_image(codes, loaded)), str(path))
        files.append(path)
    text = render(prompt_tokens + new, loaded)
    with atomic_write(out / "sample.txt", "w") as f:
        f.write(text + "\n")
    record = {
        "mode": "image" if image else "text",
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "tokens": new,
        "text": text,
        "images": [p.name for p in files],
        "sampling": s.to_dict(),
        "model": loaded.source,
    }
    with atomic_write(out / "sample.json", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    return files + [out / "sample.txt", out / "sample.json"]


STAGE_PROMPT = "a red circle on a white background"  # the demo's pictures are coloured shapes


def stage_sample(run_dir: str | Path, train_out: str | Path, seed: int = 0) -> list[str]:
    """The main job's train stage ends here: one sample from the model it just trained, written to
    `<run>/generated/` (a picture for STAGE_PROMPT when the run has a VQ-VAE and a tokenizer, else
    a text continuation). A sample that cannot be made is a note, never a failed stage."""
    run_dir, out = Path(run_dir), Path(run_dir) / "generated"
    try:
        loaded = load_parts(find_parts(train_out, _dir(run_dir / "tokenizer"), _dir(run_dir / "vqvae")))
        image = loaded.vqvae is not None and loaded.tokenizer is not None
        ids = None if loaded.tokenizer is not None else [loaded.vocab.bos_id]
        files = generate_sample(
            loaded, out, Sampling(seed=seed, top_k=100, max_new_tokens=48), STAGE_PROMPT, ids, image
        )
    except (GenerateError, FileNotFoundError, ValueError) as e:
        return [f"no generated sample: {e}"]
    kind = f"picture for {STAGE_PROMPT!r}" if image else "text continuation"
    return [f"generated sample ({kind}): {', '.join(str(f) for f in files)}"]


def _dir(path: Path) -> str | None:
    return str(path) if path.is_dir() else None

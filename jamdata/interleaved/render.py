"""`jamdata instruct show`: a self-contained HTML page of a few interleaved samples.

Text is decoded from the tokens, images from their VQ codes (with the VQ-VAE; without one, a
colour mosaic of the codes). Tokens that are not training targets are greyed out; spans moved by
the CM3 transform are shown in place with a dashed outline and their `<mask:i>` number.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Callable

import numpy as np

from jamdata.formats.wds import iter_samples
from jamdata.interleaved.cm3 import cm3_inverse
from jamdata.manifest import ManifestError, read_manifest
from jamdata.vocab import JointVocab

CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
.sample{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1.5em 0}
.meta{color:#666;font-size:.85em;margin-bottom:.6em}
.seg{margin:.3em 0}.role{font-size:.7em;color:#fff;border-radius:3px;padding:0 .3em;margin-right:.4em}
.instruction{background:#8e44ad}.response{background:#27ae60}.context{background:#7f8c8d}
.off{color:#aaa}.imgoff{opacity:.35}
.cm3{outline:1px dashed #e67e22;background:#fdf2e9}.tag{font-size:.7em;color:#e67e22}
img{image-rendering:pixelated;width:160px;height:160px;border:1px solid #ddd;vertical-align:middle}
"""


def _png(pixels_hwc: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels_hwc).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mosaic(codes: np.ndarray) -> np.ndarray:
    """Codes as colours (a stand-in when no VQ-VAE is available)."""
    c = np.asarray(codes, np.uint64)
    rgb = np.stack([(c * 2654435761) % 251, (c * 40503) % 241, (c * 69069) % 239], -1)
    return rgb.astype(np.uint8)


def _runs(labels: list) -> list[tuple[int, int]]:
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((start, i))
            start = i
    return out


def render_sample(
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    layout: dict,
    vocab: JointVocab,
    decode_text: Callable[[list[int]], str],
    decode_image: Callable[[np.ndarray], np.ndarray] | None,
) -> str:
    cm3 = layout.get("cm3")
    if cm3:
        tokens, loss_mask = cm3_inverse(tokens, vocab, loss_mask)
    span_of = np.full(len(tokens), -1)
    for i, (s, n) in enumerate((cm3 or {}).get("spans", [])):
        span_of[s : s + n] = i
    parts = [
        f"<div class='meta'><b>{html.escape(layout['key'])}</b> · {html.escape(layout['source'])} · "
        f"{layout['n_tokens']} tokens, {layout['n_targets']} targets · loss: {layout['loss']}"
        + (f" · CM3 spans: {len(cm3['spans'])}" if cm3 else "")
        + (
            f" · dropped {len(layout['dropped_segments'])} segment(s) to fit {layout['max_len']}"
            if layout.get("dropped_segments")
            else ""
        )
        + "</div>"
    ]
    for seg in layout["segments"]:
        a = seg["start"] + int(seg.get("break", False))
        b = seg["start"] + seg["length"]
        role = f"<span class='role {seg['role']}'>{seg['role']}</span>"
        if seg["modality"] == "text":
            labels = [(int(loss_mask[i]), int(span_of[i])) for i in range(a, b)]
            html_parts = []
            for r0, r1 in _runs(labels):
                target, span = labels[r0]
                text = html.escape(decode_text(tokens[a + r0 : a + r1].tolist()))
                cls = ("" if target else "off") + (" cm3" if span >= 0 else "")
                tag = f"<span class='tag'>&lt;mask:{span}&gt;</span>" if span >= 0 else ""
                html_parts.append(f"<span class='{cls.strip()}'>{tag}{text}</span>")
            parts.append(f"<div class='seg'>{role}{' '.join(html_parts)}</div>")
        else:
            codes = vocab.image_codes(tokens[a + 1 : b - 1]).reshape(seg["h"], seg["w"])
            pixels = decode_image(codes) if decode_image else mosaic(codes)
            cls = ("" if loss_mask[a:b].any() else "imgoff") + (" cm3" if (span_of[a:b] >= 0).any() else "")
            ref = html.escape(str(seg.get("image_ref") or ""))
            spans = sorted(set(span_of[a:b].tolist()) - {-1})
            tag = "".join(
                f"<span class='tag'>&lt;mask:{i}&gt; on {(span_of[a:b] == i).sum()} codes </span>" for i in spans
            )
            parts.append(
                f"<div class='seg'>{role}<img class='{cls.strip()}' src='{_png(pixels)}' "
                f"title='{ref}'> {tag}<span class='meta'>{seg['h']}x{seg['w']} codes · {ref}</span></div>"
            )
    return "<div class='sample'>" + "\n".join(parts) + "</div>"


def render_dataset(
    root: str, n: int = 8, tokenizer: str | None = None, vqvae: str | None = None, keys: list[str] | None = None
) -> str:
    """HTML for the first `n` samples (or the given keys) of an interleaved dataset. The tokenizer
    and VQ-VAE default to the paths recorded in the manifest's config."""
    from jamdata.text.tokenizer import TextTokenizer

    manifest = read_manifest(root)
    if manifest["kind"] != "interleaved":
        raise ManifestError(f"{root} is a {manifest['kind']!r} dataset, not 'interleaved'")
    vocab = JointVocab.from_dict(manifest["vocab"])
    tok = TextTokenizer(tokenizer or manifest["config"]["tokenizer"], vocab.n_image_codes)
    decode_image = None
    note = "images decoded with the VQ-VAE"
    vq_path = vqvae or manifest["config"].get("vqvae")
    if vq_path and Path(vq_path).exists():
        from jamdata.image.preprocess import to_uint8_image
        from jamdata.interleaved.images import VQEncoder

        enc = VQEncoder(vq_path)
        decode_image = lambda codes: to_uint8_image(enc.decode(codes))  # noqa: E731
    else:
        note = f"no VQ-VAE at {vq_path!r}: images shown as code mosaics"
    blocks = []
    for shard in manifest["shards"]:
        for sample in iter_samples(f"{root.rstrip('/')}/{shard['path']}"):
            if keys is not None and sample.key not in keys:
                continue
            d = sample.decoded()
            blocks.append(
                render_sample(d["tokens.npy"], d["loss_mask.npy"], d["json"], vocab, tok.decode, decode_image)
            )
            if len(blocks) >= n:
                break
        if len(blocks) >= n:
            break
    title = f"{html.escape(root)}: {len(blocks)} of {manifest['totals']['records']} samples"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
        f"</head><body><h1>{title}</h1><p class='meta'>{note}. Grey: not a training target "
        f"(loss mask 0). Dashed: a CM3 span, moved to the end of the sequence in training."
        f"</p>{''.join(blocks)}</body></html>\n"
    )

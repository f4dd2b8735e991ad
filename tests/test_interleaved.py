"""Interleaved documents: sources, templates, loss masks and truncation, checked token by token."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from jamdata.config import Config, ConfigError
from jamdata.interleaved.build import BuildSpec, SampleBuilder, read_records
from jamdata.interleaved.document import IMAGE, TEXT, Document, ImageRef, RejectedDocument, Segment
from jamdata.interleaved.sources import ImageStore, conversation_document, howto_document, mmc4_document
from jamdata.interleaved.template import Template, encode_document
from jamdata.text.tokenizer import TextTokenizer

GRID = 32  # 32 x 32 = 1024 codes per image, the CM3leon geometry


class StubEncoder:
    """Deterministic stand-in for the VQ-VAE: one code per patch from the patch's mean colour."""

    n_codes = 8192

    def __init__(self, grid: int = GRID):
        self.grid = grid

    def encode(self, images):
        out = []
        for x in images:
            r = x.shape[-1] // self.grid
            m = x.reshape(3, self.grid, r, self.grid, r).mean(axis=(2, 4))
            out.append(
                (np.round((m + 1) * 50).astype(np.int64) * np.array([1, 101, 10201])[:, None, None]).sum(0)
                % self.n_codes
            )
        return out


@pytest.fixture(scope="module")
def tok(sp_model_path):
    return TextTokenizer(str(sp_model_path))


def make_spec(sources, **extra) -> BuildSpec:
    return BuildSpec.from_config(Config({"sources": sources, **extra}))


def builder(spec, tok, grid=GRID) -> SampleBuilder:
    return SampleBuilder(spec, tok.vocab, tok.encode, StubEncoder(grid), resolution=64)


def build_all(spec, b):
    samples, rejects = {}, []
    for idx, f in spec.input_files():
        for kind, value in read_records(spec, idx, f):
            if kind == "reject":
                rejects.append(value)
                continue
            s, rej = b.build(value)
            rejects += rej
            if s:
                samples[s["key"]] = s
    return samples, rejects


def png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def expected_image_ids(tok, data: bytes) -> np.ndarray:
    from jamdata.image.preprocess import preprocess_image

    px, _ = preprocess_image(data, 64, min_size=16)
    return tok.vocab.image_ids(StubEncoder().encode([px])[0].ravel())


def check_layout(tok, tokens, mask, layout, template_loss="response", image_bytes=None):
    """Walk the whole sequence segment by segment and compare every token."""
    v = tok.vocab
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    assert len(tokens) == len(mask) == layout["n_tokens"] <= layout["max_len"]
    assert tokens[0] == v.bos_id and mask[0] == 0 and tokens[-1] == v.eos_id
    pos, prev = 1, None
    for seg in layout["segments"]:
        assert seg["start"] == pos
        span = tokens[pos : pos + seg["length"]]
        want_break = prev is not None and IMAGE in (prev, seg["modality"])
        assert seg["break"] == want_break
        if want_break:
            assert span[0] == v.break_id
            span = span[1:]
        if seg["modality"] == TEXT:
            ids = tok.encode(seg["text"])
            assert list(span) == (ids[: len(span)] if seg.get("truncated") else ids)
        else:
            assert (seg["h"], seg["w"]) == (GRID, GRID)
            assert len(span) == GRID * GRID + 2 and span[0] == v.boi_id and span[-1] == v.eoi_id
            assert (v.modality(span[1:-1]) == 2).all()
            if image_bytes is not None:
                np.testing.assert_array_equal(span[1:-1], expected_image_ids(tok, image_bytes(seg["image_ref"])))
        target = template_loss == "all" or seg["role"] == "response"
        assert (mask[pos : pos + seg["length"]] == int(target)).all(), seg
        pos += seg["length"]
        prev = seg["modality"]
    assert pos == len(tokens) - 1
    # every image span is whole: as many <boi> as <eoi>, each followed by exactly h*w codes
    boi = np.flatnonzero(tokens == v.boi_id)
    assert len(boi) == (tokens == v.eoi_id).sum()
    for b in boi:
        assert tokens[b + GRID * GRID + 1] == v.eoi_id


# -- how-to -------------------------------------------------------------------------------------
def test_howto_layout_exact(tok, sample_data):
    root = sample_data / "instruct" / "howto"
    spec = make_spec([{"format": "howto", "paths": [str(root / "articles.json")]}], template={"max_len": 8192})
    samples, rejects = build_all(spec, builder(spec, tok))
    assert rejects == []
    arts = {a["id"]: a for a in json.loads((root / "articles.json").read_text())}
    assert sorted(samples) == sorted(f"howto-{k}" for k in arts)
    s = samples["howto-plant-a-bean-seed"]
    layout, tokens, mask = s["fields"]["json"], s["fields"]["tokens.npy"], s["fields"]["loss_mask.npy"]
    art = arts["plant-a-bean-seed"]
    segs = [(x["modality"], x["role"], x["text"] or x["image_ref"]) for x in layout["segments"]]
    want = [("text", "instruction", "How to Plant a Bean Seed"), ("text", "response", art["intro"])]
    for n, step in enumerate(art["steps"], 1):
        want += [("text", "response", f"Step {n}: {step['text']}"), ("image", "response", step["image"])]
    assert segs == want
    check_layout(tok, tokens, mask, layout, image_bytes=lambda ref: (root / ref).read_bytes())
    # instruction tokens carry no loss, the rest (response + </s>) does
    n_instr = layout["segments"][0]["length"]
    assert mask[: 1 + n_instr].sum() == 0 and mask[1 + n_instr :].all()
    assert tokens.dtype == np.int32 and mask.dtype == np.uint8
    # the article whose last step has no picture ends in text
    tea = samples["howto-brew-loose-leaf-tea"]["fields"]["json"]["segments"]
    assert tea[-1]["modality"] == "text" and sum(x["modality"] == IMAGE for x in tea) == 3


def test_howto_loss_all_and_prefixes(tok, sample_data):
    root = sample_data / "instruct" / "howto"
    spec = make_spec(
        [{"format": "howto", "paths": [str(root / "articles.json")]}],
        template={
            "loss": "all",
            "max_len": 8192,
            "instruction_prefix": "Question:",
            "response_prefix": "Answer:",
            "instruction_format": "{title}?",
            "step_format": "({n}) {text}",
        },
    )
    samples, _ = build_all(spec, builder(spec, tok))
    s = samples["howto-make-a-sandwich"]
    layout, mask = s["fields"]["json"], s["fields"]["loss_mask.npy"]
    assert [x["text"] for x in layout["segments"][:4]] == [
        "Question:",
        "Make a Cucumber Sandwich?",
        "Answer:",
        "A light sandwich for a summer lunch.",
    ]
    assert layout["segments"][4]["text"] == "(1) Slice a cucumber as thinly as you can."
    assert mask[0] == 0 and mask[1:].all()
    check_layout(tok, s["fields"]["tokens.npy"], mask, layout, template_loss="all")


@pytest.mark.parametrize("max_len", [40, 1100, 1500, 2100, 2150, 3000, 4200])
def test_truncation_never_cuts_an_image(tok, sample_data, max_len):
    root = sample_data / "instruct" / "howto"
    spec = make_spec([{"format": "howto", "paths": [str(root / "articles.json")]}], template={"max_len": max_len})
    samples, rejects = build_all(spec, builder(spec, tok))
    assert samples, rejects
    for s in samples.values():
        layout = s["fields"]["json"]
        check_layout(tok, s["fields"]["tokens.npy"], s["fields"]["loss_mask.npy"], layout)
        full = 2 + sum(len(tok.encode(x["text"])) if x["modality"] == TEXT else 0 for x in layout["segments"])
        if layout["dropped_segments"] or layout["truncated_tokens"]:
            assert any(r["id"] == s["key"] + "/truncation" for r in rejects)
        else:
            assert layout["n_tokens"] <= max_len and full <= layout["n_tokens"]


def test_truncation_rejects_when_nothing_to_learn_remains(tok):
    doc = Document(
        "k", "howto", [Segment.text_of("instruction", "word " * 50), Segment.text_of("response", "short answer")]
    )
    with pytest.raises(RejectedDocument, match="nothing to train on"):
        encode_document(doc, Template(max_len=20), tok.vocab, tok.encode, {})
    enc = encode_document(doc, Template(max_len=20, loss="all"), tok.vocab, tok.encode, {})
    assert len(enc.tokens) == 20 and enc.segments[0]["truncated"] and enc.truncated_tokens > 0


# -- conversations ------------------------------------------------------------------------------
def test_conversation_roles_and_unknown_role(tok, sample_data):
    root = sample_data / "instruct" / "conversations"
    spec = make_spec([{"format": "conversation", "paths": [str(root)]}])
    samples, rejects = build_all(spec, builder(spec, tok))
    assert [r["reason"] for r in rejects] == [
        "turn 0: unknown role 'moderator' (known: assistant, gpt, human, system, user)"
    ]
    assert rejects[0]["file"].endswith("conversations.jsonl") and rejects[0]["offset"] > 0
    s = samples["conv-shapes-2"]
    layout = s["fields"]["json"]
    assert [(x["modality"], x["role"]) for x in layout["segments"]] == [
        ("text", "context"),
        ("image", "instruction"),
        ("text", "instruction"),
        ("text", "response"),
    ]
    check_layout(
        tok,
        s["fields"]["tokens.npy"],
        s["fields"]["loss_mask.npy"],
        layout,
        image_bytes=lambda ref: (root / ref).read_bytes(),
    )
    # only the assistant's answer (and </s>) are targets
    assert s["fields"]["loss_mask.npy"].sum() == len(tok.encode("Blue.")) + 1


def test_conversation_bad_records():
    with pytest.raises(RejectedDocument, match="no turns"):
        conversation_document({"id": "x", "turns": []}, "f.jsonl", 0)
    with pytest.raises(RejectedDocument, match="no assistant turn"):
        conversation_document({"turns": [{"role": "user", "content": "hi"}]}, "f.jsonl", 0)
    with pytest.raises(RejectedDocument, match="neither text nor image"):
        conversation_document({"turns": [{"role": "user", "content": [{"video": "a.mp4"}]}]}, "f.jsonl", 0)
    doc = conversation_document(
        {"turns": [{"role": "User", "content": [{"image": "a.png"}]}, {"role": "assistant", "content": "ok"}]},
        "/d/f.jsonl",
        7,
    )
    assert doc.segments[0].image.path == "/d/a.png" and doc.key == "conv-f_jsonl-7"


# -- bad how-to input ---------------------------------------------------------------------------
def test_howto_bad_input_rejected_with_reasons(tok, sample_data):
    root = sample_data / "instruct" / "howto"
    spec = make_spec([{"format": "howto", "paths": [str(root / "broken.jsonl")]}])
    samples, rejects = build_all(spec, builder(spec, tok))
    assert samples == {}
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert "does-not-exist.png" in reasons["howto-bad-missing-image"]
    assert "missing" in reasons["howto-bad-missing-image"]
    assert "undecodable" in reasons["howto-bad-corrupt-image"]
    lines = (root / "broken.jsonl").read_text().splitlines(True)
    no_steps = [r for r in rejects if r["reason"] == "article has no steps"]
    assert len(no_steps) == 1 and no_steps[0]["offset"] == len(lines[0]) + len(lines[1])
    assert no_steps[0]["snippet"] == "Do Nothing"
    from jamdata.interleaved.images import load_pixels

    assert "is not fetched" in load_pixels(ImageRef("u", path="https://example.org/a.png"), 64)
    with pytest.raises(RejectedDocument, match="no title"):
        howto_document({"steps": [{"text": "a"}]}, "f.json", 0, Template())
    with pytest.raises(RejectedDocument, match="not valid base64"):
        howto_document({"title": "t", "steps": [{"text": "a", "image_base64": "%%%"}]}, "f.json", 0, Template())


def test_unparseable_lines_are_rejects(tok, tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n')
    spec = make_spec([{"format": "conversation", "paths": str(f)}])
    samples, rejects = build_all(spec, builder(spec, tok))
    assert len(samples) == 1 and rejects[0]["reason"].startswith("not valid JSON") and rejects[0]["offset"] > 0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="sources.0.format"):
        make_spec([{"format": "pdf", "paths": "x"}])
    with pytest.raises(ConfigError, match="sources.0.pathz"):
        make_spec([{"format": "howto", "pathz": "x"}])
    with pytest.raises(ConfigError, match="template.loss"):
        make_spec([{"format": "howto", "paths": "x"}], template={"loss": "prompt"})
    with pytest.raises(ValueError, match="step_format"):
        make_spec([{"format": "howto", "paths": "x"}], template={"step_format": "{step}"})


# -- mmc4 (the real sample, with a local image store made here) ---------------------------------
def sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


@pytest.fixture(scope="module")
def mmc4_store(corpus, tmp_path_factory):
    """Images for every URL of the first 20 documents except each document's second image."""
    src = corpus / "interleaved" / "mmc4-sample.jsonl"
    docs = [json.loads(line) for line in src.read_text().splitlines()]
    store = tmp_path_factory.mktemp("store")
    stored: dict[str, bytes] = {}
    for d, doc in enumerate(docs[:20]):
        for k, info in enumerate(doc["image_info"]):
            if k == 1:
                continue
            data = png(d * 100 + k)
            (store / f"{sha1(info['raw_url'])}.png").write_bytes(data)
            stored[info["raw_url"]] = data
    return src, docs, store, stored


def test_mmc4_real_sample_layout(tok, mmc4_store):
    src, docs, store, stored = mmc4_store
    spec = make_spec([{"format": "mmc4", "paths": str(src), "image_store": str(store)}], template={"max_len": 16384})
    samples, rejects = build_all(spec, builder(spec, tok))
    with_images = [d for d in docs if any(i["raw_url"] in stored for i in d["image_info"])]
    assert len(samples) == len(with_images) == 20
    assert sum("need 1" in r["reason"] for r in rejects) == len(docs) - 20
    assert sum("/img" in r["id"] and "not in the image store" in r["reason"] for r in rejects) == sum(
        1 for d in with_images for i in d["image_info"] if i["raw_url"] not in stored
    )
    unresolved = next(r["reason"] for r in rejects if "need 1" in r["reason"])
    assert "not in the image store (never fetched)" in unresolved
    for d in with_images:
        s = samples["mmc4-" + sha1(d["url"])[:20]]
        layout = s["fields"]["json"]
        want = []
        for i, sentence in enumerate(d["text_list"]):
            if sentence.strip():
                want.append(("text", sentence.strip()))
            want += [
                ("image", info["raw_url"])
                for info in d["image_info"]
                if info["matched_text_index"] == i and info["raw_url"] in stored
            ]
        assert [(x["modality"], x["text"] or x["image_ref"]) for x in layout["segments"]] == want
        assert layout["loss"] == "all"
        check_layout(
            tok, s["fields"]["tokens.npy"], s["fields"]["loss_mask.npy"], layout, "all", image_bytes=stored.__getitem__
        )


def test_mmc4_tar_store_and_out_of_range(tok, mmc4_store, tmp_path):
    src, docs, store, stored = mmc4_store
    tar_path = tmp_path / "store.tar"
    with tarfile.open(tar_path, "w") as tar:
        for f in sorted(store.iterdir()):
            tar.add(f, arcname=f"imgs/{f.name}")
    st = ImageStore(str(tar_path))
    assert len(st) == len(stored)
    doc = mmc4_document(docs[0], "x.jsonl", 0, st)
    assert doc.n_images == len(docs[0]["image_info"]) - 1 and len(doc.dropped) == 1
    from jamdata.interleaved.images import read_image_bytes

    first = next(s.image for s in doc.segments if s.modality == IMAGE)
    assert read_image_bytes(first) == stored[first.ref]
    bad = dict(docs[0], image_info=[dict(docs[0]["image_info"][0], matched_text_index=len(docs[0]["text_list"]))])
    with pytest.raises(RejectedDocument, match="out of range"):
        mmc4_document(bad, "x.jsonl", 0, st)
    # without a store nothing is fetched: every image is dropped with a reason
    with pytest.raises(RejectedDocument, match="no image store configured"):
        mmc4_document(docs[0], "x.jsonl", 0, None)
    # mmc4's own image_name also resolves
    named = tmp_path / "named"
    named.mkdir()
    (named / docs[0]["image_info"][0]["image_name"]).write_bytes(png(1))
    assert mmc4_document(docs[0], "x.jsonl", 0, ImageStore(str(named))).n_images == 1


def test_segment_validation():
    with pytest.raises(ValueError, match="role"):
        Segment("text", "narrator", text="x")
    with pytest.raises(ValueError):
        Segment("image", "response", text="x")
    assert Segment.image_of("response", ImageRef("r", data=b"1")).image.data == b"1"


@pytest.mark.slow
def test_real_256px_vqvae_gives_1024_code_spans(tok, sample_data):
    """The CM3leon geometry with the project's VQ-VAE (untrained weights are enough for layout)."""
    import torch

    from jamdata.image.vqvae import build_vqvae
    from jamdata.interleaved.images import VQEncoder

    torch.manual_seed(0)
    enc = VQEncoder.__new__(VQEncoder)
    enc.model, enc.n_codes, enc.resolution, enc.batch_size = build_vqvae("256px-f8").eval(), 8192, 256, 4
    root = sample_data / "instruct" / "conversations"
    spec = make_spec([{"format": "conversation", "paths": str(root)}], image_min_size=32)
    b = SampleBuilder(spec, tok.vocab, tok.encode, enc, resolution=256)
    rec = json.loads((root / "conversations.jsonl").read_text().splitlines()[0])
    s, rejects = b.build(conversation_document(rec, str(root / "conversations.jsonl"), 0))
    assert rejects == []
    layout, t = s["fields"]["json"], s["fields"]["tokens.npy"]
    check_layout(tok, t, s["fields"]["loss_mask.npy"], layout)
    seg = layout["segments"][1]
    assert (seg["h"], seg["w"]) == (32, 32) and seg["length"] == 1 + 1024 + 2  # <break> <boi> codes <eoi>
    assert (tok.vocab.modality(t[seg["start"] + 2 : seg["start"] + 2 + 1024]) == 2).all()

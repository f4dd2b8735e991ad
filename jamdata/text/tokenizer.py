"""Text tokenizer: a SentencePiece model whose piece ids are the text ids of the joint vocabulary.

Training follows the LLaMA recipe (BPE, digits split, byte fallback, identity normalisation, no
whitespace collapsing) so that decoding gives back the exact input text. A tokenizer *dataset*
directory holds `tokenizer.model`, `vocab.json` (the joint vocabulary) and `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from jamdata.vocab import JointVocab
from jamdata.errors import UserError

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "vocab.json"

# The LLaMA tokenizer's trainer settings (read from its model proto), minus the vocabulary size.
LLAMA_TRAINER = dict(
    model_type="bpe",
    split_digits=True,
    byte_fallback=True,
    character_coverage=0.99995,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    split_by_number=True,
    split_by_whitespace=True,
    max_sentencepiece_length=16,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


class TokenizerError(UserError, ValueError):
    """A tokenizer file that is missing the model or is not a SentencePiece model (names the file)."""


class TextTokenizer:
    """Loads a `.model` file (or a tokenizer dataset directory holding `tokenizer.model`)."""

    def __init__(self, model_path: str, n_image_codes: int = 8192):
        from jamdata.io import fs_and_path, join, open_url

        path = str(model_path)
        fs, p = fs_and_path(path)
        if fs.isdir(p):  # a path or a URL (never pathlib: it folds the `//` of gs://)
            path = join(path, MODEL_FILE)
        try:
            with open_url(path, "rb") as f:
                proto = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"tokenizer model {path} does not exist "
                "(run the tokenizer stage or `jamdata tokenizer train`, "
                "or set text.tokenizer.model)"
            ) from None
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise TokenizerError(f"{path} is not a SentencePiece model: {e}") from None
        self.path = path
        self.proto = proto
        self.vocab = JointVocab(self.sp.get_piece_size(), hashlib.sha256(proto).hexdigest(), n_image_codes)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Decode text ids; special and image ids are dropped (use JointVocab.token_name to show them)."""
        ids = [int(i) for i in ids if int(i) < self.vocab.text_size]
        return self.sp.decode(ids)

    def encode_documents(self, texts: Sequence[str], eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize a batch of documents in one SentencePiece call and pack them.

        Returns (flat tokens in the shard dtype, per-document lengths); each document is followed
        by `</s>` (the joint vocabulary's eos) when `eos`. SentencePiece hands back int32 buffers
        (no Python ints are made), and packing is one copy per document. One thread: parallelism
        comes from worker processes."""
        arrays = self.sp.encode(list(texts), return_type="numpy", num_threads=1)
        extra = 1 if eos else 0
        lengths = np.fromiter((a.size + extra for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.empty(int(lengths.sum()), dtype=self.vocab.dtype)
        pos = 0
        for a in arrays:
            flat[pos : pos + a.size] = a
            pos += a.size + extra
            if eos:
                flat[pos - 1] = self.vocab.eos_id
        return flat, lengths


# -- training ----------------------------------------------------------------------------------
def training_lines(texts: Iterable[str], max_bytes: int, max_line_bytes: int = 4096) -> Iterator[str]:
    """Documents -> non-empty lines for SentencePiece (which skips over-long 'sentences'), with
    long lines cut at spaces, until `max_bytes` of text have been produced."""
    budget = max_bytes
    for text in texts:
        for line in text.split("\n"):
            while line:
                if len(line.encode("utf-8")) <= max_line_bytes:
                    piece, line = line, ""
                else:
                    cut = line.rfind(" ", 0, max_line_bytes // 4)  # chars; ≤ 4 bytes each
                    cut = cut if cut > 0 else max_line_bytes // 4
                    piece, line = line[:cut], line[cut:]
                if piece.strip():
                    yield piece
                    budget -= len(piece.encode("utf-8"))
                    if budget <= 0:
                        return


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int = 32000, max_bytes: int = 100_000_000, threads: int = 1, **overrides
) -> bytes:
    """Train a LLaMA-style BPE model on `texts` (documents) and return the model proto bytes.

    Deterministic for the same input: no input sampling inside SentencePiece (we pass exactly the
    lines to use) and a fixed set of trainer flags."""
    import io

    if vocab_size < 300:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: byte fallback alone needs 259 pieces")
    lines = list(training_lines(texts, max_bytes))
    if not lines:
        raise TokenizerError("no text to train the tokenizer on (the clean documents are empty)")
    model = io.BytesIO()
    flags: dict[str, Any] = dict(LLAMA_TRAINER)
    flags.update(overrides)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            num_threads=threads,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=16384,
            hard_vocab_limit=False,
            minloglevel=2,
            **flags,
        )
    except RuntimeError as e:  # e.g. a vocabulary smaller than the characters it must cover
        raise TokenizerError(f"SentencePiece training failed: {str(e).split('] ')[-1]}") from None
    return model.getvalue()


def write_tokenizer_dataset(
    out_dir: str,
    proto: bytes,
    n_image_codes: int,
    config: dict,
    summary: dict | None = None,
    inputs: list[str] | None = None,
) -> JointVocab:
    """`tokenizer.model` + `vocab.json` + manifest (kind "tokenizer"); the manifest is written last."""
    from jamdata.io import atomic_write
    from jamdata.manifest import build_manifest, describe_shard, write_manifest

    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = JointVocab(sp.get_piece_size(), hashlib.sha256(proto).hexdigest(), n_image_codes)
    with atomic_write(f"{out_dir}/{MODEL_FILE}", "wb") as f:
        f.write(proto)
    with atomic_write(f"{out_dir}/{VOCAB_FILE}", "w") as f:
        json.dump(vocab.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    shards = [describe_shard(out_dir, MODEL_FILE, records=vocab.text_size), describe_shard(out_dir, VOCAB_FILE)]
    info = {
        "text_pieces": vocab.text_size,
        "joint_size": vocab.size,
        "dtype": str(vocab.dtype),
        **tokenizer_settings(sp),
        **(summary or {}),
    }
    write_manifest(out_dir, build_manifest("tokenizer", shards, config, vocab, info, inputs))
    return vocab


def tokenizer_settings(sp: spm.SentencePieceProcessor) -> dict:
    """The properties that matter for round trips, probed from the model's behaviour (the
    bundled protobuf bindings may not match the runtime, so the proto is not parsed)."""
    probe = "a  b\t\n\u00e9 2024"
    digits = [i for i in sp.encode("2024 1999") if not sp.is_byte(i)]  # rare digits may be bytes
    return {
        "split_digits": all(len(sp.id_to_piece(i).strip("\u2581")) <= 1 for i in digits),
        "byte_fallback": has_byte_fallback(sp),
        "lossless": sp.decode(sp.encode(probe)) == probe,
    }


def has_byte_fallback(sp: spm.SentencePieceProcessor) -> bool:
    """Whether a character outside the pieces becomes its UTF-8 bytes rather than `<unk>`. Probed
    by encoding: byte pieces can be present in a model whose trainer flag is off, and then they
    are never used (a whole Japanese novel turns into `<unk>`)."""
    rare = "\U000f0041"  # a private-use character no vocabulary holds
    return sp.piece_to_id("<0x41>") != sp.unk_id() and sp.unk_id() not in sp.encode(rare)


def unk_share(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> float | None:
    """Share of `<unk>` among the tokens of `texts` (None when there is no token)."""
    unk, total = sp.unk_id(), 0
    n_unk = 0
    for ids in sp.encode(list(texts)):
        total += len(ids)
        n_unk += sum(1 for i in ids if i == unk)
    return n_unk / total if total else None

"""Text tokenizer: LLaMA-style training, loading a real model, lossless round trips, packing."""

import numpy as np
import pytest
import sentencepiece as spm

from jamdata.manifest import read_manifest, validate_dataset
from jamdata.text.tokenizer import (
    TextTokenizer,
    TokenizerError,
    tokenizer_settings,
    train_sentencepiece,
    training_lines,
    write_tokenizer_dataset,
)
from jamdata.vocab import JointVocab

TRICKY = "Año 2024: 1234567 ∮ 漢字 🙂\tTab  two  spaces\n\n  indented\r\nend "


@pytest.fixture(scope="module")
def book_texts(corpus):
    files = sorted((corpus / "books" / "shakespeare").glob("*_gut.txt"))[:6]
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="module")
def trained(book_texts):
    return train_sentencepiece(book_texts, vocab_size=1200, max_bytes=1_500_000)


def test_trained_model_llama_settings_and_round_trip(trained, book_texts):
    sp = spm.SentencePieceProcessor(model_proto=trained)
    assert sp.get_piece_size() == 1200
    assert tokenizer_settings(sp) == {"split_digits": True, "byte_fallback": True, "lossless": True}
    digits = [sp.id_to_piece(i) for i in sp.encode("year 1599")]
    assert digits[-4:] == ["1", "5", "9", "9"]  # every digit its own piece
    ids = sp.encode("漢字🙂")  # characters never seen in training -> bytes, not <unk>
    assert sp.unk_id() not in ids and all(sp.is_byte(i) for i in ids if sp.id_to_piece(i) != "▁")
    assert sp.decode(sp.encode(TRICKY)) == TRICKY
    para = book_texts[0][5000:9000]
    assert sp.decode(sp.encode(para)) == para


def test_training_is_deterministic(trained, book_texts):
    assert train_sentencepiece(book_texts, vocab_size=1200, max_bytes=1_500_000) == trained


def test_training_lines_cuts_long_lines_and_respects_budget():
    long = ("word " * 3000).strip()
    lines = list(training_lines(["a\n\n" + long + "\nb"], max_bytes=10_000, max_line_bytes=1000))
    assert lines[0] == "a" and all(len(x.encode()) <= 1000 for x in lines)
    assert "".join(lines[1:]).replace(" ", "").startswith("wordword")
    assert sum(len(x.encode()) for x in lines) < 10_000 + 1000


def test_too_small_or_empty_training_fails_clearly():
    with pytest.raises(TokenizerError, match="too small"):
        train_sentencepiece(["x"], vocab_size=100)
    with pytest.raises(TokenizerError, match="smaller than required_chars"):
        train_sentencepiece(["".join(map(chr, range(0x4E00, 0x4E00 + 600)))], vocab_size=400, character_coverage=1.0)
    with pytest.raises(TokenizerError, match="no text"):
        train_sentencepiece(["", "\n"], vocab_size=1000)


def test_real_llama_style_model(sp_model_path):
    tok = TextTokenizer(str(sp_model_path), n_image_codes=8192)
    assert tok.encode("Hello world") == [22557, 1526]
    assert tok.vocab.text_size == 32000 and tok.vocab.dtype == np.uint16
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert [tok.sp.id_to_piece(i) for i in tok.encode("42")][-2:] == ["4", "2"]
    assert all(tok.sp.is_byte(i) for i in tok.encode("\U0001f9ec")[1:])


def test_encode_documents_packs_with_eos(sp_model_path):
    tok = TextTokenizer(str(sp_model_path), n_image_codes=16)
    texts = ["Hello world", "", "digits 123"]
    flat, lengths = tok.encode_documents(texts)
    assert flat.dtype == tok.vocab.dtype and lengths.tolist() == [len(tok.encode(t)) + 1 for t in texts]
    docs = np.split(flat, np.cumsum(lengths)[:-1])
    for text, doc in zip(texts, docs):
        assert doc[-1] == tok.vocab.eos_id and doc[:-1].tolist() == tok.encode(text)
        assert tok.decode(doc) == text  # eos is outside the text range and dropped


def test_tokenizer_dataset(tmp_path, trained):
    vocab = write_tokenizer_dataset(str(tmp_path), trained, 512, {"vocab_size": 1200})
    m = read_manifest(str(tmp_path))
    assert m["kind"] == "tokenizer" and m["vocab_fingerprint"] == vocab.fingerprint
    assert JointVocab.from_dict(m["vocab"]) == vocab
    assert validate_dataset(str(tmp_path)) == []
    tok = TextTokenizer(str(tmp_path), 512)
    assert tok.vocab == vocab and tok.vocab.image_offset == 1200 + len(vocab.specials)
    assert m["summary"]["split_digits"] and m["summary"]["byte_fallback"]


def test_missing_or_bad_model_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.model"):
        TextTokenizer(str(tmp_path / "nothere.model"))
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        TextTokenizer(str(tmp_path))  # a directory without tokenizer.model
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="bad.model"):
        TextTokenizer(str(tmp_path / "bad.model"))


def test_batch_shard_write_matches_per_document(tmp_path, sp_model_path):
    from jamdata.formats.megatron import IndexedDatasetWriter

    tok = TextTokenizer(str(sp_model_path), 8192)
    flat, lengths = tok.encode_documents(["one doc", "", "third 123 doc"])
    a = IndexedDatasetWriter(str(tmp_path / "a"), flat.dtype)
    a.add_documents(flat, lengths)
    b = IndexedDatasetWriter(str(tmp_path / "b"), flat.dtype)
    for doc in np.split(flat, np.cumsum(lengths)[:-1]):
        b.add_document(doc)
    assert a.finalize() == b.finalize() == (3, int(lengths.sum()))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    c = IndexedDatasetWriter(str(tmp_path / "c"), np.uint16)
    with pytest.raises(ValueError, match="add up"):
        c.add_documents(flat, [1])
    with pytest.raises(ValueError, match="out of range"):
        c.add_documents(np.array([70000]), [1])
    c.abort()

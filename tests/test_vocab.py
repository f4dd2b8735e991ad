import numpy as np
import pytest

from jamdata.vocab import IMAGE, SPECIAL, SPECIAL_TOKENS, TEXT, JointVocab, VocabMismatchError, check_same_vocab


def test_layout_and_round_trip():
    v = JointVocab(32000, "a" * 64)
    assert v.special_offset == 32000
    assert v.image_offset == 32000 + len(SPECIAL_TOKENS)
    assert v.size == v.image_offset + 8192
    assert v.dtype == np.uint16
    for tid in [0, 31999, v.eos_id, v.mask_id(15), v.image_offset, v.size - 1]:
        assert v.to_global(*v.to_local(tid)) == tid
    assert v.to_local(v.boi_id) == (SPECIAL, SPECIAL_TOKENS.index("<boi>"))
    assert v.to_local(5) == (TEXT, 5)
    assert v.to_local(v.image_offset + 7) == (IMAGE, 7)
    codes = np.array([0, 8191, 17])
    assert (v.image_codes(v.image_ids(codes)) == codes).all()
    assert list(v.modality(np.array([1, v.pad_id, v.image_offset]))) == [0, 1, 2]
    with pytest.raises(ValueError):
        v.image_ids([8192])
    with pytest.raises(ValueError):
        v.to_local(v.size)
    with pytest.raises(KeyError, match="<nope>"):
        v.special_id("<nope>")


def test_fingerprint_is_stable_and_sensitive():
    a = JointVocab(32000, "a" * 64)
    assert a.fingerprint == JointVocab(32000, "a" * 64).fingerprint
    assert a.fingerprint != JointVocab(32000, "b" * 64).fingerprint
    assert a.fingerprint != JointVocab(32000, "a" * 64, n_image_codes=4096).fingerprint
    assert JointVocab.from_dict(a.to_dict()) == a
    big = JointVocab(70000, "a" * 64)
    assert big.dtype == np.int32


def test_mismatch_names_both():
    with pytest.raises(VocabMismatchError, match="dsA.*dsB"):
        check_same_vocab({"dsA": "jv1-1", "dsB": "jv1-2", "clean": None})
    assert check_same_vocab({"x": "jv1-1", "y": "jv1-1"}) == "jv1-1"


def test_from_real_sentencepiece(sp_model_path):
    v = JointVocab.from_sentencepiece(str(sp_model_path))
    assert v.text_size == 32000
    assert v.fingerprint.startswith("jv1-")

import pyarrow as pa
import pytest

from schemas import DOCUMENT, INTERLEAVED, REJECT, SchemaError, validate_batch, validate_manifest, validate_record
from schemas.records import to_table


def doc(**kw):
    d = {"id": "cc/1", "source": "commoncrawl", "text": "hello", "url": None, "metadata": "{}"}
    d.update(kw)
    return d


def test_valid_table_passes():
    validate_batch(to_table([doc(), doc(id="cc/2")], DOCUMENT), DOCUMENT)


def test_errors_name_the_field():
    t = to_table([doc()], DOCUMENT)
    with pytest.raises(SchemaError, match="'text'.*missing"):
        validate_batch(t.drop_columns(["text"]), DOCUMENT)
    wrong = t.set_column(t.schema.get_field_index("source"), "source", pa.array([1], pa.int64()))
    with pytest.raises(SchemaError, match="'source'.*type"):
        validate_batch(wrong, DOCUMENT)
    with pytest.raises(SchemaError, match="'bogus'"):
        validate_batch(t.append_column("bogus", pa.array([1])), DOCUMENT)
    with pytest.raises(SchemaError, match="'id'"):
        validate_record(doc(id=None), DOCUMENT)
    with pytest.raises(SchemaError, match="'offset'"):
        validate_record({"id": "x", "source": "c4", "stage": "read", "reason": "r", "offset": "far"}, REJECT)


def test_interleaved_segments():
    rec = {
        "key": "k",
        "source": "howto",
        "tokens": [1, 2],
        "loss_mask": [0, 1],
        "segments": [
            {"modality": "text", "role": "instruction", "text": "hi", "image_ref": None, "start": 0, "length": 2}
        ],
    }
    validate_batch(to_table([rec], INTERLEAVED), INTERLEAVED)


def test_manifest_schema_names_field():
    with pytest.raises(ValueError, match="kind"):
        validate_manifest(
            {
                "manifest_version": "1",
                "schema_version": "1",
                "kind": "nonsense",
                "vocab_fingerprint": None,
                "config": {},
                "shards": [],
                "totals": {"records": 0, "bytes": 0},
                "tool_version": "x",
            }
        )

"""A document's metadata is a dict from the reader until the writer dumps it to the parquet column."""

from __future__ import annotations

import datetime
import json

import pyarrow.parquet as pq

from jamdata.text.readers import make_doc
from pipelines.text_clean import _document_writer
from pipelines.text_filters import ApplyFilters
from schemas.records import document_row, metadata_json

FILTERS = {"chains": {"c4": ["pii"], "books": ["min_length"]}}


def test_reader_document_carries_a_plain_json_dict():
    doc = make_doc("c4", "f.json", 1, "Text.", "https://x.org/a", {"timestamp": "2019", "n": 2, "b": {"z": 1, "a": 2}})
    assert doc["metadata"] == {"timestamp": "2019", "n": 2, "b": {"a": 2, "z": 1}}
    assert isinstance(doc["metadata"], dict)


def test_values_json_has_no_type_for_become_strings_at_read_time():
    doc = make_doc("c4", "f.json", 1, "Text.", None, {"when": datetime.date(2019, 7, 2), "n": 1.5})
    assert doc["metadata"] == {"when": "2019-07-02", "n": 1.5}


def test_filter_fields_land_in_the_dict_and_the_document_fields_stay():
    doc = make_doc("c4", "f.json", 7, "Write to someone@example.org today, please.", None, {"file": "f.json"})
    step = ApplyFilters(FILTERS)
    step.setup()
    (out,) = [o for o in step.process(doc) if isinstance(o, dict)]
    assert out["metadata"] == {"file": "f.json", "pii_emails": 1}
    assert doc["metadata"] == {"file": "f.json"}  # the input record is not changed in place
    assert "someone@example.org" not in out["text"]


def test_filter_reject_is_located_from_the_dict():
    doc = make_doc("books", "b.txt", 0, "Too short.", None, {"file": "b.txt", "offset": 42})
    step = ApplyFilters(FILTERS)
    step.setup()
    (reject,) = [o.value for o in step.process(doc) if getattr(o, "tag", None) == "rejects"]
    assert (reject["file"], reject["offset"], reject["id"]) == ("b.txt", 42, doc["id"])
    assert reject["reason"].startswith("min_length")


def test_written_column_is_json_text_with_sorted_keys(tmp_path):
    docs = [
        make_doc("c4", "f.json", 1, "Über alles.", None, {"zeta": "ü", "alpha": [3, 1], "mid": {"y": 1, "x": None}}),
        make_doc("c4", "f.json", 2, "Half an emoji \ud83d here.", None, {"title": "t\udc00"}),
    ]
    docs[0]["metadata"]["boilerplate_lines_removed"] = 2  # a later step's field
    _document_writer(str(tmp_path), "c4/part-00000", docs)
    (row0, row1) = pq.read_table(tmp_path / "c4/part-00000.parquet").to_pylist()
    assert row0["metadata"] == (
        '{"alpha": [3, 1], "boilerplate_lines_removed": 2, "mid": {"x": null, "y": 1}, "zeta": "ü"}'
    )
    assert row1["metadata"] == '{"lone_surrogates_replaced": true, "title": "t\ufffd"}'
    assert row1["text"] == "Half an emoji \ufffd here."
    assert json.loads(row0["metadata"]) == docs[0]["metadata"]


def test_document_row_dumps_once_and_leaves_written_text_alone():
    doc = make_doc("books", "b.txt", 0, "A book.", None, {"title": "B"})
    row = document_row(doc)
    assert row["metadata"] == '{"title": "B"}' and doc["metadata"] == {"title": "B"}
    assert document_row(row) == row  # already text (a row read back): written as it is


def test_metadata_nested_too_deeply_to_write_becomes_a_note():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert json.loads(metadata_json({"ok": 1, "deep": deep})) == {"ok": 1, "deep": "<nested too deeply to keep>"}

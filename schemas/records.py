"""Record schemas. Bump SCHEMA_VERSION when a field changes meaning or type."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

import pyarrow as pa
from jamdata.errors import UserError

SCHEMA_VERSION = "1.0"


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={b"jam.schema": name.encode(), b"jam.schema_version": SCHEMA_VERSION.encode()})


# A cleaned (or raw, just-read) source document. `metadata` is a JSON object as text so that each
# source can keep its own fields (timestamp, title, pile_set_name...) without schema churn. Between
# the steps of a stage it is a dict (steps add fields without re-parsing); `document_row` turns it
# into the column's text when the record is written.
DOCUMENT = _schema(
    "document",
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
        pa.field("quality_score", pa.float32()),
    ],
)


def metadata_json(meta: Mapping[str, Any]) -> str:
    """A document's metadata as the `metadata` column's text: keys sorted, non-ASCII kept, values
    JSON has no type for written as `str`. A value nested too deeply to write (metadata that a
    parser just accepted can exceed the writer's stack in a deeper call) becomes a note, not a
    failure."""
    dump = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)  # noqa: E731
    try:
        return dump(meta)
    except (RecursionError, ValueError):
        safe = {}
        for k, v in meta.items():
            try:
                dump(v)
                safe[k] = v
            except (RecursionError, ValueError):
                safe[k] = "<nested too deeply to keep>"
        return dump(safe)


def document_row(doc: Mapping[str, Any]) -> dict:
    """A DOCUMENT record as written: its metadata dict dumped to the column's JSON text (a record
    whose metadata is already text, e.g. one read back from parquet, is written as it is)."""
    meta = doc.get("metadata")
    return {**doc, "metadata": metadata_json(meta)} if isinstance(meta, Mapping) else dict(doc)


# Anything a stage dropped, with why. `file`/`offset` locate raw-input problems.
REJECT = _schema(
    "reject",
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("snippet", pa.string()),
        pa.field("file", pa.string()),
        pa.field("offset", pa.int64()),
    ],
)

# How reject reasons are written: `<code>: <detail>`, the code short, lower-case and stable (the
# report groups by it), the detail free text (numbers, ids, URLs). `reject_record` builds one.
_CODE = re.compile(r"^([a-z][a-z0-9_]{0,39})(?:: |:$|$)(.*)$", re.S)
_IMAGE_CODE = re.compile(r"^image .* (?:refused|unusable) \(([a-z][a-z0-9_]{0,39})\): ?(.*)$", re.S)
_VARYING = re.compile(r"[a-z][a-z0-9+.-]*://\S+|'[^']*'|\"[^\"]*\"")


def reject_reason(code: str, detail: str = "") -> str:
    """The `reason` of a REJECT: the stable code, then the free-text detail."""
    if not _CODE.match(code) or ":" in code or " " in code:
        raise ValueError(f"reject code {code!r} must be lower_snake_case, at most 40 characters")
    return f"{code}: {detail}" if detail else code


def reject(
    id: str,
    source: str,
    stage: str,
    reason: str,
    snippet: str | None = None,
    file: str | None = None,
    offset: int | None = None,
) -> dict:
    """One REJECT record, its columns in schema order: every stage builds its rejects here."""
    return {
        "id": id,
        "source": source,
        "stage": stage,
        "reason": reason,
        "snippet": snippet,
        "file": file,
        "offset": offset,
    }


def reject_record(
    id: str,
    source: str,
    stage: str,
    code: str,
    detail: str = "",
    snippet: str | None = None,
    file: str | None = None,
    offset: int | None = None,
) -> dict:
    """One REJECT record, its reason written `code: detail` (see reject_reason)."""
    return reject(id, source, stage, reject_reason(code, detail), snippet, file, offset)


def split_reason(reason: str) -> tuple[str, str]:
    """(code, detail) of a reject reason. `code: detail` and `image '<ref>' refused (<code>): ...`
    give their code; an older free-text reason gets a code made from its words with the varying
    parts (numbers, ids, quoted names, URLs) left out, so equal causes share one code."""
    reason = (reason or "").strip()
    for pattern in (_CODE, _IMAGE_CODE):
        m = pattern.match(reason)
        if m:
            return m.group(1), m.group(2).strip()
    head = re.split(r"[:(\[;]", _VARYING.sub(" ", reason.lower().replace("(s)", "s")), maxsplit=1)[0]
    words = [w.strip(".,").replace("-", "_") for w in head.split() if re.fullmatch(r"[a-z][a-z-]*(?:-\d+)?[.,]?", w)]
    return ("_".join(words)[:40].rstrip("_") or "other"), reason


# A tokenized text document (the Hugging Face parquet export of text token shards).
TOKENIZED_DOCUMENT = _schema(
    "tokenized_document",
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
    ],
)

# One image-caption sample as written into webdataset tars (one row = one tar sample).
IMAGE_CAPTION = _schema(
    "image_caption",
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("original_key", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_codes", pa.list_(pa.uint16()), nullable=False),
        pa.field("caption_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("order", pa.string(), nullable=False),  # "caption_first" | "image_first"
    ],
)

SEGMENT = pa.struct(
    [
        pa.field("modality", pa.string(), nullable=False),  # "text" | "image"
        pa.field("role", pa.string(), nullable=False),  # "instruction" | "response" | "context"
        pa.field("text", pa.string()),  # text segments
        pa.field("image_ref", pa.string()),  # image segments: where the image came from
        pa.field("start", pa.int32(), nullable=False),  # span in `tokens`
        pa.field("length", pa.int32(), nullable=False),
    ]
)

# An interleaved mixed-modal sample: ordered segments and the joint-vocabulary tokens with a loss mask.
INTERLEAVED = _schema(
    "interleaved",
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("segments", pa.list_(SEGMENT), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.uint8()), nullable=False),
    ],
)

SCHEMAS: dict[str, pa.Schema] = {
    "document": DOCUMENT,
    "reject": REJECT,
    "tokenized_document": TOKENIZED_DOCUMENT,
    "image_caption": IMAGE_CAPTION,
    "interleaved": INTERLEAVED,
}


class SchemaError(UserError, ValueError):
    """A record batch that does not match its schema; the message names the field."""

    def __init__(self, schema_name: str, field: str, problem: str, where: str = ""):
        loc = f" in {where}" if where else ""
        super().__init__(f"{schema_name} schema: field {field!r}: {problem}{loc}")
        self.field = field


def _name(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(b"jam.schema", b"record").decode()


def validate_batch(batch: pa.RecordBatch | pa.Table, schema: pa.Schema, where: str = "") -> None:
    """Check names, types and nullability of every schema field; extra fields are an error too,
    because a misspelt field would otherwise be silently dropped downstream."""
    name = _name(schema)
    got = {f.name: f for f in batch.schema}
    for field in schema:
        if field.name not in got:
            raise SchemaError(name, field.name, "missing", where)
        if not got[field.name].type.equals(field.type):
            raise SchemaError(name, field.name, f"has type {got[field.name].type}, expected {field.type}", where)
        if not field.nullable and batch.column(field.name).null_count:
            raise SchemaError(
                name, field.name, f"{batch.column(field.name).null_count} null value(s) in a required field", where
            )
    extra = sorted(set(got) - set(schema.names))
    if extra:
        raise SchemaError(name, extra[0], f"not in the schema (fields: {', '.join(schema.names)})", where)


def validate_record(record: Mapping[str, Any], schema: pa.Schema, where: str = "") -> None:
    """Validate one dict record by converting it through pyarrow (the same rules as a batch)."""
    name = _name(schema)
    missing = [f.name for f in schema if f.name not in record and not f.nullable]
    if missing:
        raise SchemaError(name, missing[0], "missing", where)
    extra = sorted(set(record) - set(schema.names))
    if extra:
        raise SchemaError(name, extra[0], f"not in the schema (fields: {', '.join(schema.names)})", where)
    for field in schema:
        value = record.get(field.name)
        if value is None:
            if not field.nullable:
                raise SchemaError(name, field.name, "null in a required field", where)
            continue
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise SchemaError(
                name, field.name, f"value {str(value)[:60]!r} does not fit {field.type}: {e}", where
            ) from None


def to_table(records: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Records (dicts) to a table of exactly this schema; missing nullable fields become null."""
    cols = {f.name: [r.get(f.name) for r in records] for f in schema}
    try:
        return pa.table(cols, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        for i, r in enumerate(records):
            validate_record(r, schema, where=f"record {i} (id {r.get('id', r.get('key'))!r})")
        raise SchemaError(_name(schema), "?", str(e)) from None

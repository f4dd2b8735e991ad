"""Input of the tokenizer and text-sample stages: a "documents" dataset (the text-clean stage's
output, or any dataset of the same schema), read from its manifest, one parquet row group at a time.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from jamdata.io import open_url
from jamdata.manifest import MANIFEST, ManifestError, read_manifest
from schemas.records import DOCUMENT, SchemaError, validate_batch


def clean_shards(clean_dir: str) -> dict[str, list[str]]:
    """source -> sorted parquet files of a "documents" dataset; each file's schema is checked
    against DOCUMENT (a wrong schema fails here, naming the file, before any work starts)."""
    manifest = read_manifest(clean_dir)
    if manifest["kind"] != "documents":
        raise ManifestError(f"{clean_dir}/{MANIFEST}: kind is {manifest['kind']!r}, expected 'documents'")
    out: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        if not shard["path"].endswith(".parquet"):
            continue
        path = f"{str(clean_dir).rstrip('/')}/{shard['path']}"
        source = shard.get("group") or posixpath.basename(posixpath.dirname(shard["path"]))
        check_document_schema(path)
        out.setdefault(source, []).append(path)
    return {s: sorted(v) for s, v in sorted(out.items())}


def check_document_schema(path: str) -> None:
    try:
        with open_url(path, "rb") as f:
            schema = pq.read_schema(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"clean shard {path} listed in the manifest does not exist") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError("document", "(file)", f"not a readable parquet file ({e})", where=path) from None
    validate_batch(schema.empty_table(), DOCUMENT, where=path)


def row_groups(path: str) -> int:
    with open_url(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_row_groups


def read_texts(path: str, row_group: int | None = None, columns=("id", "text")) -> pa.Table:
    with open_url(path, "rb") as f:
        pf = pq.ParquetFile(f)
        return (
            pf.read(columns=list(columns)) if row_group is None else pf.read_row_group(row_group, columns=list(columns))
        )


def text_bytes_estimate(path: str) -> int:
    """UTF-8 bytes of the `text` column from the parquet footer alone (no data read)."""
    with open_url(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    col = meta.schema.names.index("text")
    total = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        total += max(0, rg.column(col).total_uncompressed_size - 4 * rg.num_rows)
    return total

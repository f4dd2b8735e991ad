"""Versioned pyarrow schemas of every record the stages exchange, and the manifest JSON schema."""

from schemas.records import (  # noqa: F401
    DOCUMENT,
    IMAGE_CAPTION,
    INTERLEAVED,
    REJECT,
    SCHEMAS,
    SCHEMA_VERSION,
    TOKENIZED_DOCUMENT,
    SchemaError,
    validate_batch,
    validate_record,
)
from schemas.manifest import MANIFEST_SCHEMA, MANIFEST_VERSION, validate_manifest  # noqa: F401

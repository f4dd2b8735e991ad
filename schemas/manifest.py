"""JSON schema of `manifest.json`, the file that makes a directory a dataset."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema

MANIFEST_VERSION = "1.0"
MANIFEST_SCHEMA: dict = json.loads((Path(__file__).parent / "manifest.schema.json").read_text())


def validate_manifest(manifest: dict, where: str = "manifest.json") -> None:
    """Raise ValueError naming the offending field path."""
    e = jsonschema.exceptions.best_match(_validator().iter_errors(manifest))  # what jsonschema.validate raises
    if e is not None:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"{where}: field {path}: {e.message}") from None


@functools.lru_cache(maxsize=1)
def _validator():
    """Built once: jsonschema.validate re-checks the schema against its meta-schema on every
    call, which made reading a manifest cost tens of milliseconds."""
    cls = jsonschema.validators.validator_for(MANIFEST_SCHEMA)
    cls.check_schema(MANIFEST_SCHEMA)
    return cls(MANIFEST_SCHEMA)

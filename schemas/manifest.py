"""JSON schema of `manifest.json`, the file that makes a directory a dataset."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema

MANIFEST_VERSION = "1.0"
MANIFEST_SCHEMA: dict = json.loads((Path(__file__).parent / "manifest.schema.json").read_text())


def validate_manifest(manifest: dict, where: str = "manifest.json") -> None:
    """Raise ValueError naming the offending field path."""
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"{where}: field {path}: {e.message}") from None

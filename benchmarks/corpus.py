"""The real sample corpus the benchmarks read: `JAM_CORPUS`, by default ../shared/corpus."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("JAM_CORPUS", REPO.parent / "shared" / "corpus"))
C4_FILES = ("CC-MAIN-2019-30-docs.jsonl.gz", "c4-sample.01.json.gz", "c4-sample.02.json.gz")


def c4_pages() -> list[str]:
    """The texts of every C4 / Common Crawl page in the corpus's c4/ folder, in file order."""
    texts = []
    for name in C4_FILES:
        with gzip.open(CORPUS / "c4" / name, "rt") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts

"""Shared fixtures. The real sample corpus lives in ../shared/corpus (override: JAM_CORPUS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("JAM_CORPUS", REPO.parent / "shared" / "corpus"))
SAMPLE = REPO / "sample_data"

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The real raw-format sample corpus; tests using it skip (with the reason) when it is absent."""
    if not (CORPUS / "README.md").exists():
        pytest.skip(f"real sample corpus not found at {CORPUS} (set JAM_CORPUS or place shared/ beside the repo)")
    return CORPUS


@pytest.fixture(scope="session")
def sample_data() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sp_model_path(corpus: Path) -> Path:
    """The real LLaMA-style SentencePiece model from the corpus."""
    return corpus / "tokenizers" / "mistral-7b-v0.1-tokenizer.model"

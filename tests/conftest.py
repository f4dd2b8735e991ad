"""Shared fixtures. The real sample corpus lives in ../shared/corpus (override: JAM_CORPUS)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("JAM_CORPUS", REPO.parent / "shared" / "corpus"))
SAMPLE = REPO / "sample_data"

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_process_group_left_behind():
    """A test that leaves a torch.distributed process group (or the launcher's variables) behind
    changes every later test in its worker: loaders gather over that world, forks inherit it. Such
    a test fails here, naming itself, and the group is left so the next test starts clean."""
    env = {k: os.environ.get(k) for k in LAUNCH_ENV}
    yield
    leftover = []
    if "torch" in sys.modules:
        dist = sys.modules["torch"].distributed
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            leftover.append("a torch.distributed process group")
    changed = [k for k, v in env.items() if os.environ.get(k) != v]
    for k in changed:
        if env[k] is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(env[k])
    if changed:
        leftover.append("launch variables " + ", ".join(changed))
    if leftover:
        pytest.fail("this test left " + " and ".join(leftover) + " behind", pytrace=False)


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

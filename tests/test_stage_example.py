"""The worked example of docs/ARCHITECTURE.md ("Adding a stage") is real: its file plus one line in
the main job's list give a stage that runs, is stamped and is reused like every other."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

from jamdata.config import SECTIONS, Config
from jamdata.manifest import build_manifest, describe_shard, read_manifest, write_manifest
from pipelines import stages

ROOT = Path(__file__).resolve().parent.parent


def example_module(monkeypatch) -> types.ModuleType:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    code = re.search(r"```python\n# pipelines/doc_counts.py\n(.*?)```", doc, re.S).group(1)
    module = types.ModuleType("doc_counts")
    monkeypatch.setitem(sys.modules, "doc_counts", module)  # dataclasses look their module up
    exec(compile(code, "doc_counts.py", "exec"), module.__dict__)
    return module


def test_the_documented_stage_runs_in_the_main_job(tmp_path, monkeypatch):
    clean = tmp_path / "run" / "text-clean"
    clean.mkdir(parents=True)
    (clean / "part.txt").write_text("x")
    funnel = {"c4": {"dedup": {"docs_out": 7}}, "wikipedia": {"dedup": {"docs_out": 1}}}
    write_manifest(
        str(clean), build_manifest("documents", [describe_shard(str(clean), "part.txt")], {}, None, {"funnel": funnel})
    )
    doc_counts = example_module(monkeypatch)
    monkeypatch.setattr(stages, "STAGES", [*stages.STAGES, doc_counts.STAGE])  # the one registration line
    monkeypatch.setattr("jamdata.config.SECTIONS", (*SECTIONS, "counts"))
    ctx = stages.StageContext(Config({"counts": {"min_docs": 2}}), str(tmp_path / "run"))
    lines = stages.run_all(ctx, only=["doc-counts"], log=lambda _: None)
    assert lines == [f"doc-counts: 2 sources -> {tmp_path / 'run' / 'doc-counts'}"]
    assert json.loads((tmp_path / "run" / "doc-counts" / "counts.json").read_text()) == {"c4": 7}
    assert read_manifest(str(tmp_path / "run" / "doc-counts"))["summary"] == {"c4": 7, "wikipedia": 1}
    again = stages.run_all(ctx, only=["doc-counts"], log=lambda _: None)
    assert again[0].startswith("doc-counts: reused")
    ctx.config.set("counts.min_docs", 0)  # a settings change redoes it
    assert "reused" not in stages.run_all(ctx, only=["doc-counts"], log=lambda _: None)[0]

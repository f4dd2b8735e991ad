"""The main job: every stage in order, each a function `run_stage(ctx) -> list[str]` (summary lines).

A stage writes its dataset(s) under `ctx.path(<stage name>)` and reads earlier stages' outputs
the same way. A stage whose outputs all have a manifest is reused unless `--force`.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jamdata.config import Config
from jamdata.manifest import is_complete


@dataclass
class StageContext:
    config: Config
    run_dir: Path
    workers: int = 1
    beam_args: list[str] = field(default_factory=list)
    force: bool = False

    def path(self, name: str) -> Path:
        return self.run_dir / name


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function"
    outputs: tuple[str, ...]  # dataset directories (under run_dir) the stage produces

    def load(self) -> Callable[[StageContext], list[str]]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: list[Stage] = [
    Stage("text-clean", "pipelines.text_clean:run_stage", ("text-clean", "text-clean-rejects")),
    Stage("tokenizer", "pipelines.text_sample:run_tokenizer_stage", ("tokenizer",)),
    Stage("text-sample", "pipelines.text_sample:run_stage", ("text-tokens",)),
    Stage("vqvae-train", "pipelines.image_tokenize:run_vqvae_stage", ("vqvae",)),
    Stage("images", "pipelines.image_tokenize:run_stage", ("image-caption", "image-caption-rejects")),
    Stage("instruct", "pipelines.instruct_build:run_stage", ("instruct", "instruct-rejects")),
    Stage("stats", "pipelines.stats:run_stage", ("report",)),
    Stage("train", "jamtrain.train:run_stage", ("train",)),
]


def run_all(ctx: StageContext, only: list[str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    summary: list[str] = []
    names = [s.name for s in STAGES]
    for name in only or []:
        if name not in names:
            raise ValueError(f"unknown stage {name!r} (stages: {', '.join(names)})")
    for i, stage in enumerate(STAGES, 1):
        if only and stage.name not in only:
            continue
        done = stage.outputs and all(is_complete(str(ctx.path(o))) for o in stage.outputs)
        if done and not ctx.force:
            log(f"[{i}/{len(STAGES)}] {stage.name}: reusing finished outputs (--force to redo)")
            summary.append(f"{stage.name}: reused " + ", ".join(str(ctx.path(o)) for o in stage.outputs))
            continue
        log(f"[{i}/{len(STAGES)}] {stage.name} ...")
        t0 = time.time()
        lines = stage.load()(ctx)
        log(f"[{i}/{len(STAGES)}] {stage.name} done in {time.time() - t0:.1f}s")
        summary += [f"{stage.name}: {line}" for line in lines]
    return summary

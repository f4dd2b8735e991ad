"""The main job: every stage in order, each a function `run_stage(ctx) -> list[str]` (summary lines).

A stage writes its dataset(s) under `ctx.path(<stage name>)` and reads earlier stages' outputs
the same way. A stage is reused (not redone) when all its outputs have a manifest and its stamp matches: the
stamp hashes the config sections the stage reads and the manifests of the datasets it reads, so a
config change or a redone upstream stage redoes it. `--force` redoes everything asked for.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jamdata.config import Config, ConfigError
from jamdata.io import atomic_write
from jamdata.manifest import MANIFEST, is_complete

STAMPS = ".jam-stages"


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
    sections: tuple[str, ...] = ()  # config keys the stage reads
    inputs: tuple[str, ...] = ()  # dataset directories (under run_dir) the stage reads

    def load(self) -> Callable[[StageContext], list[str]]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: list[Stage] = [
    Stage("text-clean", "pipelines.text_clean:run_stage", ("text-clean", "text-clean-rejects"),
          ("run.seed", "text.sources", "text.clean")),
    Stage("tokenizer", "pipelines.text_sample:run_tokenizer_stage", ("tokenizer",),
          ("run.seed", "text.tokenizer", "text.sample.shares", "vqvae.codebook_size"), ("text-clean",)),
    Stage("text-sample", "pipelines.text_sample:run_stage", ("text-tokens",),
          ("run.seed", "text.sample"), ("text-clean", "tokenizer")),
    Stage("vqvae-train", "pipelines.image_tokenize:run_vqvae_stage", ("vqvae",), ("run.seed", "vqvae")),
    Stage("images", "pipelines.image_tokenize:run_stage", ("image-caption", "image-caption-rejects"),
          ("run.seed", "images"), ("tokenizer", "vqvae")),
    Stage("instruct", "pipelines.instruct_build:run_stage", ("instruct", "instruct-rejects"),
          ("run.seed", "instruct"), ("tokenizer", "vqvae")),
    Stage("stats", "pipelines.stats:run_stage", ("report",), ("stats", "loader"),
          ("text-clean", "text-clean-rejects", "text-tokens", "image-caption", "image-caption-rejects",
           "instruct", "instruct-rejects", "vqvae")),
    Stage("train", "jamtrain.train:run_stage", ("train",), ("run.seed", "loader", "train"),
          ("text-tokens", "image-caption", "instruct")),
]


def stamp(stage: Stage, ctx: StageContext) -> str:
    """What a stage's outputs depend on: its config sections and its input manifests."""
    parts: dict = {"config": {k: ctx.config.get(k, object, None) for k in stage.sections}, "inputs": {}}
    for name in stage.inputs:
        m = ctx.path(name) / MANIFEST
        parts["inputs"][name] = hashlib.sha256(m.read_bytes()).hexdigest() if m.exists() else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _stamp_path(ctx: StageContext, stage: Stage) -> Path:
    return ctx.run_dir / STAMPS / f"{stage.name}.stamp"


def is_fresh(stage: Stage, ctx: StageContext) -> bool:
    p = _stamp_path(ctx, stage)
    return (all(is_complete(str(ctx.path(o))) for o in stage.outputs)
            and p.exists() and p.read_text() == stamp(stage, ctx))


def run_all(ctx: StageContext, only: list[str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    summary: list[str] = []
    names = [s.name for s in STAGES]
    for name in only or []:
        if name not in names:
            raise ConfigError("--stage", f"unknown stage {name!r}", names)  # one clear line, not a traceback
    for i, stage in enumerate(STAGES, 1):
        if only and stage.name not in only:
            continue
        if not ctx.force and is_fresh(stage, ctx):
            log(f"[{i}/{len(STAGES)}] {stage.name}: reusing finished outputs (--force to redo)")
            summary.append(f"{stage.name}: reused " + ", ".join(str(ctx.path(o)) for o in stage.outputs))
            continue
        log(f"[{i}/{len(STAGES)}] {stage.name} ...")
        t0 = time.time()
        lines = stage.load()(ctx)
        with atomic_write(_stamp_path(ctx, stage), "w") as f:
            f.write(stamp(stage, ctx))
        log(f"[{i}/{len(STAGES)}] {stage.name} done in {time.time() - t0:.1f}s")
        summary += [f"{stage.name}: {line}" for line in lines]
    return summary

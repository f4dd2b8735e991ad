"""The main job: every stage in order, each a function `run_stage(ctx) -> list[str]` (summary lines).

A stage writes its dataset(s) under `ctx.path(<stage name>)` and reads earlier stages' outputs
the same way. A stage is reused (not redone) only when
- each of its outputs has a manifest and every shard the manifest lists is there with its size
  (`run.reuse_verify: sha256` also compares every shard's sha256: exact, but it reads everything);
- its stamp matches: the stamp hashes the config sections the stage reads, the manifests of the
  datasets it reads, and the size and modification time of every raw input file its sections name,
  so a config change, a redone upstream stage or a changed raw file redoes it.
`--force` redoes everything asked for.

The run directory may be a local path or a URL (s3://, gs://); it is kept as a string (pathlib would
fold the `//`), local paths made absolute in the driver, and stamps live under `<run>/.jam-stages/`.
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
from jamdata.io import absolute, atomic_write, exists, fs_and_path, join, read_bytes
from jamdata.manifest import MANIFEST, validate_dataset

STAMPS = ".jam-stages"
REUSE_VERIFY = ("size", "sha256")


@dataclass
class StageContext:
    """`run_dir`: a local path or a URL (s3://, gs://), kept as a string (pathlib would fold the
    `//` of a URL) and made absolute here, in the driver, so Beam workers read the same files."""
    config: Config
    run_dir: str
    workers: int = 1
    beam_args: list[str] = field(default_factory=list)
    force: bool = False

    def __post_init__(self) -> None:
        self.run_dir = absolute(self.run_dir)

    def path(self, name: str) -> str:
        return join(self.run_dir, name)


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
    Stage("vqvae-train", "pipelines.vqvae_train:run_vqvae_stage", ("vqvae",), ("run.seed", "vqvae")),
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


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def raw_input_files(values) -> dict[str, list]:
    """Size and modification time of every file named by a string in `values` that is a path or
    URL (directories and globs expanded). Other strings (`cosine`, `en`) name no file and add nothing."""
    found: dict[str, list] = {}
    for text in sorted(set(_strings(values))):
        if "://" not in text and not Path(text).exists() and not any(c in text for c in "*?["):
            continue
        try:
            fs, p = fs_and_path(text)
            if fs.isdir(p):  # one listing with sizes, not one request per file (buckets hold many)
                infos = fs.find(p, detail=True)
            elif any(c in p for c in "*?["):
                infos = fs.glob(p, detail=True)
            else:
                infos = {p: fs.info(p)} if fs.exists(p) else {}
            for path in sorted(infos):
                info = infos[path]
                when = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("etag")
                found[path] = [info.get("size"), str(when)]
        except (OSError, ValueError) as e:  # unreachable: the stamp differs, so the stage is redone
            found[text] = ["unreadable", str(e)]
    return found


def stamp(stage: Stage, ctx: StageContext) -> str:
    """What a stage's outputs depend on: its config sections, its input manifests and the raw files
    its sections name."""
    config = {k: ctx.config.get(k, object, None) for k in stage.sections}
    parts: dict = {"config": config, "inputs": {}, "raw": raw_input_files(config)}
    for name in stage.inputs:
        m = join(ctx.path(name), MANIFEST)
        parts["inputs"][name] = hashlib.sha256(read_bytes(m)).hexdigest() if exists(m) else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _stamp_path(ctx: StageContext, stage: Stage) -> str:
    return join(ctx.run_dir, STAMPS, f"{stage.name}.stamp")


def outputs_intact(stage: Stage, ctx: StageContext) -> bool:
    """Every output has its manifest and every shard it lists (size, or sha256 on request)."""
    deep = ctx.config.choice("run.reuse_verify", REUSE_VERIFY, default="size") == "sha256"
    return all(not validate_dataset(str(ctx.path(o)), deep=deep) for o in stage.outputs)


def is_fresh(stage: Stage, ctx: StageContext) -> bool:
    p = _stamp_path(ctx, stage)
    return exists(p) and read_bytes(p).decode() == stamp(stage, ctx) and outputs_intact(stage, ctx)


def run_all(ctx: StageContext, only: list[str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    summary: list[str] = []
    ctx.config.choice("run.reuse_verify", REUSE_VERIFY, default="size")  # a typo fails before any work
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

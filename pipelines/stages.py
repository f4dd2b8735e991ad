"""The main job: every stage in order. A stage is a `jamdata.stage.Stage` declared in its own file
(`STAGE = Stage(...)`); this list is the only place that orders them.

A stage writes its dataset(s) under `ctx.path(<name>)` and reads earlier stages' outputs the same
way. A stage is reused (not redone) only when
- each of its outputs has a manifest and every shard the manifest lists is there with its size
  (`run.reuse_verify: sha256` also compares every shard's sha256: exact, but it reads everything);
- its stamp matches: the stamp hashes the stage's parsed settings (`Stage.settings`), the manifests
  of the datasets it reads, and the size and modification time of every raw input file its
  settings name, so a settings change, a redone upstream stage or a changed raw file redoes it.
`--force` redoes everything asked for.

The run directory may be a local path or a URL (s3://, gs://); it is kept as a string (pathlib would
fold the `//`), local paths made absolute in the driver, and stamps live under `<run>/.jam-stages/`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from jamdata.config import ConfigError
from jamdata.io import atomic_write, exists, fs_and_path, join, read_bytes
from jamdata.manifest import MANIFEST, validate_dataset
from jamdata.settings import RunSettings, as_plain, load_settings
from jamdata.stage import Stage, StageContext  # noqa: F401 (StageContext: the main job's context)
from jamtrain import stage as train_stage
from pipelines import image_tokenize, instruct_build, stats, text_clean, text_sample, tokenizer_train, vqvae_train

STAMPS = ".jam-stages"

STAGES: list[Stage] = [
    text_clean.STAGE,
    tokenizer_train.STAGE,
    text_sample.STAGE,
    vqvae_train.STAGE,
    image_tokenize.STAGE,
    instruct_build.STAGE,
    stats.STAGE,
    train_stage.STAGE,
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
        if not text.strip():  # an empty prefix or format string names no file (Path("") is the cwd)
            continue
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


def stamp(stage: Stage, ctx: StageContext, parsed=None) -> str:
    """What a stage's outputs depend on: its parsed settings (`parsed`, else read now), its input
    manifests and the raw files its settings name."""
    settings = as_plain(stage.settings(ctx) if parsed is None else parsed)
    parts: dict = {"settings": settings, "inputs": {}, "raw": raw_input_files(settings)}
    for name in stage.inputs:
        m = join(ctx.path(name), MANIFEST)
        parts["inputs"][name] = hashlib.sha256(read_bytes(m)).hexdigest() if exists(m) else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _stamp_path(ctx: StageContext, stage: Stage) -> str:
    return join(ctx.run_dir, STAMPS, f"{stage.name}.stamp")


def outputs_intact(stage: Stage, ctx: StageContext) -> bool:
    """Every output has its manifest and every shard it lists (size, or sha256 on request)."""
    deep = load_settings(RunSettings, ctx.config.section("run")).reuse_verify == "sha256"
    return all(not validate_dataset(str(ctx.path(o)), deep=deep) for o in stage.outputs)


def is_fresh(stage: Stage, ctx: StageContext, now: str) -> bool:
    """The stamp written when the stage last finished is `now`, and its outputs are intact."""
    p = _stamp_path(ctx, stage)
    return exists(p) and read_bytes(p).decode() == now and outputs_intact(stage, ctx)


def run_all(ctx: StageContext, only: list[str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    summary: list[str] = []
    load_settings(RunSettings, ctx.config.section("run"))  # a typo fails before any work
    names = [s.name for s in STAGES]
    for name in only or []:
        if name not in names:
            raise ConfigError("--stage", f"unknown stage {name!r}", names)  # one clear line, not a traceback
    # every section the chosen stages read, parsed (and so checked) before the first one runs
    parsed = {s.name: s.settings(ctx) for s in STAGES if not only or s.name in only}
    for i, stage in enumerate(STAGES, 1):
        if stage.name not in parsed:
            continue
        # one stamp per stage, taken before it runs: a raw file changed while it runs redoes it next time
        now = stamp(stage, ctx, parsed[stage.name])
        if not ctx.force and is_fresh(stage, ctx, now):
            log(f"[{i}/{len(STAGES)}] {stage.name}: reusing finished outputs (--force to redo)")
            summary.append(f"{stage.name}: reused " + ", ".join(str(ctx.path(o)) for o in stage.outputs))
            continue
        log(f"[{i}/{len(STAGES)}] {stage.name} ...")
        t0 = time.time()
        lines = stage.run(ctx)
        with atomic_write(_stamp_path(ctx, stage), "w") as f:
            f.write(now)
        log(f"[{i}/{len(STAGES)}] {stage.name} done in {time.time() - t0:.1f}s")
        summary += [f"{stage.name}: {line}" for line in lines]
    return summary

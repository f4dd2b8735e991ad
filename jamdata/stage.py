"""What a stage is: one object per stage, declared in the stage's own file and used both by its
command (`jamdata text clean`, `jamdata images tokenize`, ...) and by the main job (`jamdata run`).

    STAGE = Stage("stats", run_stage, outputs=("report",), inputs=(...), settings=stats_settings)

- `run(ctx) -> list[str]` does the work and returns summary lines;
- `outputs` / `inputs`: dataset directories it writes / reads, by name; `ctx.path(name)` is
  `<run_dir>/<name>` unless a command maps the name elsewhere (`--out`, `--rejects`);
- `settings(ctx)`: the stage's parsed settings (a settings dataclass, or what its reader returns);
  a stage's freshness stamp is exactly these settings plus the manifests of its inputs and the size
  and modification time of the raw files the settings name.

Adding a stage is its own file with a `STAGE` plus one line in `pipelines/stages.py` (see
docs/ARCHITECTURE.md, "Adding a stage").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from jamdata.config import Config
from jamdata.io import absolute, join


@dataclass
class StageContext:
    """`run_dir`: a local path or a URL (s3://, gs://), kept as a string (pathlib would fold the
    `//` of a URL) and made absolute here, in the driver, so Beam workers read the same files.
    `paths`: dataset names a command maps away from `<run_dir>/<name>` (a None or empty path
    maps nothing)."""

    config: Config
    run_dir: str
    workers: int = 1
    beam_args: list[str] = field(default_factory=list)
    force: bool = False
    paths: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = absolute(self.run_dir)
        self.paths = {k: absolute(v) for k, v in self.paths.items() if v}

    def path(self, name: str) -> str:
        return self.paths.get(name) or join(self.run_dir, name)

    @property
    def seed(self) -> int:
        from jamdata.settings import RunSettings, load_settings

        return load_settings(RunSettings, self.config.section("run")).seed


def no_settings(ctx: StageContext) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], list[str]]
    outputs: tuple[str, ...]  # dataset directories it writes
    inputs: tuple[str, ...] = ()  # dataset directories of earlier stages it reads
    settings: Callable[[StageContext], Any] = no_settings  # its parsed settings: what its stamp hashes


def context_from_args(
    args: argparse.Namespace, paths: dict[str, str | None] | None = None, out_is_run_dir: bool = True
) -> StageContext:
    """The context a stage command runs in: `--config` (bundled name or path) with `--set`, the
    storage options, the run directory (`--out` when it names the run directory, else
    `run.out_dir`), `--workers` and the Beam flags after `--`."""
    from jamdata.config import beam_args_setting, run_dir_setting, storage_setting, workers_setting

    cfg = Config.load(args.config, overrides=getattr(args, "set", []))
    run = cfg.section("run")
    storage_setting(run)
    out = run_dir_setting(getattr(args, "out", None) if out_is_run_dir else None, run)
    return StageContext(
        cfg,
        out,
        workers=workers_setting(getattr(args, "workers", None), run),
        beam_args=beam_args_setting(getattr(args, "beam_args", []), run),
        paths=paths or {},
    )

"""The `text.sample` section (docs/text-sample.md) read into typed settings: the token budget,
the shares and most epochs per source, shards and parts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jamdata.config import Config, ConfigError
from jamdata.settings import load_settings, setting
from jamdata.text import sampling

LLAMA_SHARES = {"commoncrawl": 67.0, "c4": 15.0, "wikipedia": 4.5, "books": 4.5, "arxiv": 2.5}
LLAMA_EPOCHS = {"commoncrawl": 1.10, "c4": 1.06, "wikipedia": 2.45, "books": 2.23, "arxiv": 1.06}


def n_image_codes(cfg: Config) -> int:
    return int(cfg.number("vqvae.codebook_size", default=8192, lo=1))


@dataclass(frozen=True)
class SampleSection:
    """The `text.sample` section (docs/text-sample.md): the token budget, shares and shards."""

    budget_tokens: int = setting(30_000_000_000, "text tokens to write over all sources", lo=1)
    shares: dict = setting(dict(LLAMA_SHARES), "source -> share of the budget (renormalised)")
    epochs: dict = setting(dict(LLAMA_EPOCHS), "source -> most epochs a source may be repeated (default 1.0)")
    shard_tokens: int = setting(1_000_000_000, "tokens per .bin/.idx shard", lo=1)
    part_tokens: int = setting(50_000_000, "each shard written as parts of about this many tokens", lo=1)
    seed: int | None = setting(None, "seed of the sample (default: run.seed)")
    batch_docs: int = setting(256, "documents tokenized per call", lo=1)
    count: str = setting("estimate", "how available tokens are counted", choices=("exact", "estimate"))
    estimate_sample_bytes: int = setting(20_000_000, "text bytes tokenized to estimate tokens per byte", lo=1)
    export_hf: bool = setting(False, "also write a Hugging Face parquet export")
    append: bool = setting(False, "add shards to an existing text-tokens dataset")
    input: str | None = setting(None, "text-clean dataset (default: the run's)")
    tokenizer: str | None = setting(None, "tokenizer dataset or .model (default: the run's)")


@dataclass
class SampleSettings:
    budget: int
    shares: dict[str, float]
    max_epochs: dict[str, float]
    shard_tokens: int
    part_tokens: int
    seed: int
    batch_docs: int
    count: str
    estimate_sample_bytes: int
    export_hf: bool
    append: bool
    input: str | None
    tokenizer: str | None
    config: dict = field(default_factory=dict)

    @property
    def targets(self) -> dict[str, int]:
        return sampling.targets(self.budget, self.shares)

    def shards_for(self, source: str) -> int:
        return max(1, math.ceil(self.targets[source] / self.shard_tokens))


def sample_settings(cfg: Config) -> SampleSettings:
    sec = cfg.section("text.sample")
    t = load_settings(SampleSection, sec)
    shares, epochs = t.shares, t.epochs
    for name, table in (("shares", shares), ("epochs", epochs)):
        for src, v in table.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(
                    f"text.sample.{name}.{src}", f"must be a non-negative number, got {v!r}", source=cfg.source
                )
    for src in epochs:
        if src not in shares:
            raise ConfigError(
                f"text.sample.epochs.{src}", "source has no share", allowed=sorted(shares), source=cfg.source
            )
    if not sum(shares.values()):
        raise ConfigError("text.sample.shares", "all shares are zero", source=cfg.source)
    return SampleSettings(
        budget=t.budget_tokens,
        shares={k: float(v) for k, v in shares.items()},
        max_epochs={s: float(epochs.get(s, 1.0)) for s in shares},
        shard_tokens=t.shard_tokens,
        part_tokens=t.part_tokens,
        seed=cfg.get("run.seed", int, default=0) if t.seed is None else t.seed,
        batch_docs=t.batch_docs,
        count=t.count,
        estimate_sample_bytes=t.estimate_sample_bytes,
        export_hf=t.export_hf,
        append=t.append,
        input=t.input,
        tokenizer=t.tokenizer,
        config=sec.to_dict(),
    )

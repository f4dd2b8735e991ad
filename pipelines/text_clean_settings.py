"""The `text.clean` section: reading, cleaning, filters, dedup and output shard settings of the
text-clean stage (`pipelines/text_clean.py`), described once."""

from __future__ import annotations

from dataclasses import dataclass

from jamdata.config import Config
from jamdata.settings import load_settings, setting
from jamdata.text.clean import CleanOptions
from jamdata.text.readers import ReadOptions
from jamdata.text.readers.splits import SPLIT_BYTES
from pipelines.text_dedup import DedupSettings

SHARD_BYTES = 512 << 20  # default text bytes per parquet shard when `shards` is not set
EXTRACT_TIMEOUT_S = 60.0  # default per-page HTML extraction limit


@dataclass(frozen=True)
class CleanSettings:
    """The `text.clean` section (docs/text-clean.md, docs/text-filters.md)."""

    shards: int | None = setting(None, "parquet shards per source (default: from shard_bytes)", lo=1)
    reject_shards: int | None = setting(None, "reject shards per source (default: from shard_bytes)", lo=1)
    shard_bytes: int = setting(SHARD_BYTES, "UTF-8 text bytes per parquet shard when shards is not set", lo=1)
    split_bytes: int = setting(SPLIT_BYTES, "a splittable file bigger than this is read in parts", lo=1 << 12)
    max_record_bytes: int = setting(16 << 20, "longer records (a 50 MB line, a huge page) are rejected", lo=1024)
    pile_set_names: list[str] = setting(["Books3"], "Pile subsets read as books")
    extract_timeout_s: float = setting(
        EXTRACT_TIMEOUT_S, "seconds one page's HTML extraction may take (0: no limit)", lo=0
    )
    line_dedup_min_docs: int = setting(3, "Common Crawl: a line in this many documents of a group is boilerplate", lo=0)
    line_dedup_min_chars: int = setting(0, "shorter lines are never boilerplate (0: all lines)", lo=0)
    line_dedup_group_files: int = setting(0, "line dedup over groups of this many files (0: per file)", lo=0)
    wiki_drop_sections: list[str] = setting(
        list(CleanOptions.wiki_drop_sections), "appendix headings dropped from Wikipedia pages ([]: none)"
    )
    filters: dict = setting({}, "filter chains per source (docs/text-filters.md; checked against each filter)")
    dedup: DedupSettings = setting(DedupSettings())


def clean_settings(text_cfg: Config) -> tuple[ReadOptions, CleanOptions, dict, dict, int, int, int, int]:
    """(read options, clean options, filters, dedup, shards, reject shards, shard bytes, split
    bytes); a shard count of 0 means "from the data": ceil(UTF-8 text bytes of the source /
    shard_bytes). A file bigger than split_bytes is read in parts where it can be split."""
    clean = text_cfg.section("clean")
    s = load_settings(CleanSettings, clean)
    ropts = ReadOptions(
        max_record_bytes=s.max_record_bytes,
        pile_set_names=tuple(s.pile_set_names),
        extract_timeout_s=float(s.extract_timeout_s),
    )
    copts = CleanOptions(
        max_expanded_chars=s.max_record_bytes,
        line_dedup_min_docs=s.line_dedup_min_docs,
        line_dedup_min_chars=s.line_dedup_min_chars,
        line_dedup_group_files=s.line_dedup_group_files,
        wiki_drop_sections=tuple(s.wiki_drop_sections),
    )
    # explicit counts win (older configs, and the demo's byte-identical outputs); else from the data
    return (
        ropts,
        copts,
        clean.section("filters").to_dict(),
        clean.section("dedup").to_dict(),
        s.shards or 0,
        s.reject_shards or 0,
        s.shard_bytes,
        s.split_bytes,
    )

"""Streaming mixed-modal loader: weighted mixture, packing, deterministic order, exact resume.

    loader = build_loader(cfg.section("loader"), dataset_dirs(cfg, run_dir), rank, world_size)
    for batch in loader: ...            # one epoch of len(loader) steps
    state = loader.state_dict()         # save with the checkpoint; load_state_dict(state) resumes

See docs/loader.md for the batch contract, the order definition and the config keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jamdata.config import Config
from jamdata.loader.cm3 import CM3Settings, parse_cm3
from jamdata.settings import load_settings, setting
from jamdata.loader.sources import DatasetSource, LoaderError

if TYPE_CHECKING:  # imported where used: torch comes with the stream module
    from jamdata.loader.jamloader import JamLoader
    from jamdata.loader.spec import LoaderSpec

# name -> its module, imported on first use (keeps torch out of plain imports)
_LAZY = {
    "JamLoader": "jamloader",
    "merge_state_dicts": "jamloader",
    "PackedStream": "stream",
    "LoaderSpec": "spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jamdata.loader.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "build_loader",
    "build_spec",
    "dataset_dirs",
    "JamLoader",
    "PackedStream",
    "LoaderSpec",
    "LoaderError",
    "merge_state_dicts",
    "hf_iterable_dataset",
    "LoaderSettings",
    "loader_settings",
]

DEFAULT_MIXTURE = {"text-tokens": 0.5, "image-caption": 0.5}


@dataclass(frozen=True)
class LoaderSettings:
    """The `loader` section (docs/loader.md): mixture, packing, order, resume."""

    mixture: dict | None = setting(None, "dataset name -> weight (default: every dataset given, equal weights)")
    paths: dict = setting({}, "dataset name -> directory (default: <run dir>/<name>)")
    seq_len: int = setting(4096, "tokens per packed row", lo=2)
    global_batch_size: int = setting(8, "rows per step over all ranks", lo=1)
    step_lanes: int = setting(2, "lanes a step's rows are drawn from", lo=1)
    slot_lanes: int | None = setting(None, "lanes over all rows of a batch (default: global_batch_size)", lo=1)
    shuffle_block: int = setting(1024, "samples shuffled together", lo=1)
    text_run_rows: int = setting(8, "rows of back-to-back documents a text run holds (0: every document alone)", lo=0)
    seed: int = setting(0, "seed of the order")
    mixture_period: int = setting(10000, "steps after which the mixture's deficits reset", lo=1)
    steps_per_epoch: int = setting(0, "steps per epoch (0: from the data)", lo=0)
    oversize: str = setting("truncate", "a sample longer than a row", choices=("truncate", "skip"))
    on_corrupt: str = setting("skip", "an unreadable shard", choices=("skip", "fail"))
    verify: str = setting(
        "sha256", "how shards are checked against their manifests", choices=("sha256", "size", "none")
    )
    token_dtype: str = setting("int32", "dtype of the token arrays", choices=("int32", "int64"))
    num_workers: int = setting(0, "DataLoader worker processes", lo=0)
    persistent_workers: bool = setting(False, "keep worker processes between epochs")
    prefetch_factor: int = setting(2, "batches each worker prepares ahead", lo=1)
    cache_dir: str | None = setting(None, "local disk cache for remote shards")
    cm3: CM3Settings | None = setting(None, "CM3 at batch time (datasets, rate, lambda, max_spans, max_span_len)")


def loader_settings(sec: Config) -> LoaderSettings:
    return load_settings(LoaderSettings, sec)


def dataset_dirs(cfg: Config, run_dir: str | Path | None = None) -> dict[str, str]:
    """Mixture name -> dataset directory: `loader.paths[name]`, else `<run dir>/<name>`."""
    s = loader_settings(cfg.section("loader"))
    mixture = s.mixture if s.mixture is not None else DEFAULT_MIXTURE
    paths = s.paths
    run_dir = str(run_dir or cfg.section("run").get("out_dir", str, default="out/run"))
    for name in paths:
        if name not in mixture:
            raise LoaderError(f"config key 'loader.paths.{name}': not in loader.mixture ({', '.join(mixture)})")
    return {name: str(paths.get(name) or f"{run_dir.rstrip('/')}/{name}") for name in mixture}


def build_spec(cfg_section: Config, datasets: dict[str, str]) -> tuple["LoaderSpec", list[DatasetSource]]:
    from jamdata.loader.spec import LoaderSpec
    from jamdata.manifest import check_compatible

    sec = cfg_section
    s = loader_settings(sec)
    mixture = s.mixture or {n: 1.0 for n in datasets}
    for name in mixture:
        if name not in datasets:
            raise LoaderError(
                f"config key '{sec._key('mixture')}.{name}': no dataset directory given for it "
                f"(have: {', '.join(datasets) or 'none'})"
            )
    for name, w in mixture.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise LoaderError(f"config key '{sec._key('mixture')}.{name}': weight must be a number >= 0, got {w!r}")
    if sum(mixture.values()) <= 0:
        raise LoaderError(f"config key '{sec._key('mixture')}': weights must not all be 0")
    names = tuple(mixture)
    roots = tuple(str(datasets[n]) for n in names)
    check_compatible(roots)
    sources = [DatasetSource.from_manifest(n, r) for n, r in zip(names, roots)]
    cm3 = parse_cm3(sec, names, {src.name: src.fmt for src in sources}, s.seq_len)
    if cm3 is not None and any(src.vocab is None for src in sources if src.name in cm3.datasets):
        raise LoaderError(
            f"config key '{sec._key('cm3.datasets')}': CM3 needs the joint vocabulary, which the "
            "manifest of " + ", ".join(src.root for src in sources if src.vocab is None) + " does not record"
        )
    spec = LoaderSpec(
        names=names,
        roots=roots,
        weights=tuple(float(mixture[n]) for n in names),
        seq_len=s.seq_len,
        global_batch_size=s.global_batch_size,
        step_lanes=s.step_lanes,
        slot_lanes=s.slot_lanes or s.global_batch_size,
        shuffle_block=s.shuffle_block,
        text_run_rows=s.text_run_rows,
        seed=s.seed,
        mixture_period=s.mixture_period,
        steps_per_epoch=s.steps_per_epoch,
        oversize=s.oversize,
        on_corrupt=s.on_corrupt,
        verify=s.verify,
        token_dtype=s.token_dtype,
        cache_dir=s.cache_dir or "",
        cm3=cm3,
    )
    return spec, sources


def build_loader(
    cfg_section: Config,
    datasets: dict[str, str],
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    persistent_workers: bool | None = None,
    pin_memory: bool = False,
) -> "JamLoader":
    """The loader of this rank. Reads only the datasets' manifests; shards open lazily."""
    from jamdata.loader.jamloader import JamLoader

    spec, sources = build_spec(cfg_section, datasets)
    s = loader_settings(cfg_section)
    nw = s.num_workers if num_workers is None else num_workers
    pw = s.persistent_workers if persistent_workers is None else persistent_workers
    return JamLoader(spec, sources, rank, world_size, nw, pw, s.prefetch_factor, pin_memory)


def hf_iterable_dataset(loader: "JamLoader") -> Any:
    """A `datasets.IterableDataset` of the same rows (one example per packed row, this rank,
    from the loader's current position to the end of its epoch)."""
    import datasets

    from jamdata.loader.jamloader import JamLoader

    spec, sources, rank, world = loader.spec, loader.sources, loader.rank, loader.world_size
    state = loader.state_dict(gather=False)

    def rows():
        lo = JamLoader(spec, sources, rank, world)
        lo.load_state_dict(state)
        for batch in lo:
            for i in range(batch["tokens"].shape[0]):
                yield {
                    "tokens": batch["tokens"][i].tolist(),
                    "loss_mask": batch["loss_mask"][i].tolist(),
                    "segment_ids": batch["segment_ids"][i].tolist(),
                    "dataset": loader.dataset_names[int(batch["dataset_index"][i])],
                    "keys": batch["keys"][i],
                }

    return datasets.IterableDataset.from_generator(rows)

"""Streaming mixed-modal loader: weighted mixture, packing, deterministic order, exact resume.

    loader = build_loader(cfg.section("loader"), dataset_dirs(cfg, run_dir), rank, world_size)
    for batch in loader: ...            # one epoch of len(loader) steps
    state = loader.state_dict()         # save with the checkpoint; load_state_dict(state) resumes

See docs/loader.md for the batch contract, the order definition and the config keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jamdata.config import Config
from jamdata.loader.cm3 import parse_cm3
from jamdata.loader.sources import DatasetSource, LoaderError

if TYPE_CHECKING:  # imported where used: torch comes with the stream module
    from jamdata.loader.stream import JamLoader, LoaderSpec

_LAZY = {"JamLoader", "LoaderSpec", "PackedStream", "merge_state_dicts"}  # keep torch out of plain imports


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from jamdata.loader import stream

        return getattr(stream, name)
    raise AttributeError(name)

__all__ = ["build_loader", "build_spec", "dataset_dirs", "JamLoader", "PackedStream", "LoaderSpec",
           "LoaderError", "merge_state_dicts", "hf_iterable_dataset", "KEYS"]

KEYS = ["mixture", "paths", "seq_len", "global_batch_size", "step_lanes", "slot_lanes", "shuffle_block", "text_run_rows",
        "seed", "mixture_period", "steps_per_epoch", "oversize", "on_corrupt", "verify", "token_dtype", "num_workers",
        "persistent_workers", "prefetch_factor", "cache_dir", "cm3"]
DEFAULT_MIXTURE = {"text-tokens": 0.5, "image-caption": 0.5}


def dataset_dirs(cfg: Config, run_dir: str | Path | None = None) -> dict[str, str]:
    """Mixture name -> dataset directory: `loader.paths[name]`, else `<run dir>/<name>`."""
    sec = cfg.section("loader")
    mixture = sec.get("mixture", dict, default=DEFAULT_MIXTURE)
    paths = sec.get("paths", dict, default={})
    run_dir = str(run_dir or cfg.section("run").get("out_dir", str, default="out/run"))
    for name in paths:
        if name not in mixture:
            raise LoaderError(f"config key 'loader.paths.{name}': not in loader.mixture ({', '.join(mixture)})")
    return {name: str(paths.get(name) or f"{run_dir.rstrip('/')}/{name}") for name in mixture}


def build_spec(cfg_section: Config, datasets: dict[str, str]) -> tuple["LoaderSpec", list[DatasetSource]]:
    from jamdata.loader.stream import LoaderSpec
    from jamdata.manifest import check_compatible

    sec = cfg_section
    sec.check_keys(KEYS)
    mixture = sec.get("mixture", dict, default=None) or {n: 1.0 for n in datasets}
    for name in mixture:
        if name not in datasets:
            raise LoaderError(f"config key '{sec._key('mixture')}.{name}': no dataset directory given for it "
                              f"(have: {', '.join(datasets) or 'none'})")
    for name, w in mixture.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise LoaderError(f"config key '{sec._key('mixture')}.{name}': weight must be a number >= 0, got {w!r}")
    if sum(mixture.values()) <= 0:
        raise LoaderError(f"config key '{sec._key('mixture')}': weights must not all be 0")
    names = tuple(mixture)
    roots = tuple(str(datasets[n]) for n in names)
    check_compatible(roots)
    sources = [DatasetSource.from_manifest(n, r) for n, r in zip(names, roots)]
    G = int(sec.number("global_batch_size", default=8, lo=1))
    seq_len = int(sec.number("seq_len", default=4096, lo=2))
    cm3 = parse_cm3(sec, names, {s.name: s.fmt for s in sources}, seq_len)
    if cm3 is not None and any(s.vocab is None for s in sources if s.name in cm3.datasets):
        raise LoaderError(f"config key '{sec._key('cm3.datasets')}': CM3 needs the joint vocabulary, which the "
                          "manifest of " + ", ".join(s.root for s in sources if s.vocab is None) + " does not record")
    spec = LoaderSpec(
        names=names, roots=roots, weights=tuple(float(mixture[n]) for n in names),
        seq_len=seq_len,
        global_batch_size=G,
        step_lanes=int(sec.number("step_lanes", default=2, lo=1)),
        slot_lanes=int(sec.get("slot_lanes", (int, type(None)), default=None) or G),
        shuffle_block=int(sec.number("shuffle_block", default=1024, lo=1)),
        text_run_rows=int(sec.number("text_run_rows", default=8, lo=0)),
        seed=int(sec.number("seed", default=0)),
        mixture_period=int(sec.number("mixture_period", default=10000, lo=1)),
        steps_per_epoch=int(sec.number("steps_per_epoch", default=0, lo=0)),
        oversize=sec.choice("oversize", ["truncate", "skip"], default="truncate"),
        on_corrupt=sec.choice("on_corrupt", ["skip", "fail"], default="skip"),
        verify=sec.choice("verify", ["sha256", "size", "none"], default="sha256"),
        token_dtype=sec.choice("token_dtype", ["int32", "int64"], default="int32"),
        cache_dir=str(sec.get("cache_dir", (str, type(None)), default=None) or ""),
        cm3=cm3,
    )
    return spec, sources


def build_loader(cfg_section: Config, datasets: dict[str, str], rank: int = 0, world_size: int = 1,
                 num_workers: int | None = None, persistent_workers: bool | None = None,
                 pin_memory: bool = False) -> "JamLoader":
    """The loader of this rank. Reads only the datasets' manifests; shards open lazily."""
    from jamdata.loader.stream import JamLoader

    spec, sources = build_spec(cfg_section, datasets)
    sec = cfg_section
    nw = int(sec.number("num_workers", default=0, lo=0)) if num_workers is None else num_workers
    pw = sec.get("persistent_workers", bool, default=False) if persistent_workers is None else persistent_workers
    return JamLoader(spec, sources, rank, world_size, nw, pw,
                     int(sec.number("prefetch_factor", default=2, lo=1)), pin_memory)


def hf_iterable_dataset(loader: "JamLoader") -> Any:
    """A `datasets.IterableDataset` of the same rows (one example per packed row, this rank,
    from the loader's current position to the end of its epoch)."""
    import datasets

    from jamdata.loader.stream import JamLoader

    spec, sources, rank, world = loader.spec, loader.sources, loader.rank, loader.world_size
    state = loader.state_dict(gather=False)

    def rows():
        lo = JamLoader(spec, sources, rank, world)
        lo.load_state_dict(state)
        for batch in lo:
            for i in range(batch["tokens"].shape[0]):
                yield {"tokens": batch["tokens"][i].tolist(), "loss_mask": batch["loss_mask"][i].tolist(),
                       "segment_ids": batch["segment_ids"][i].tolist(),
                       "dataset": loader.dataset_names[int(batch["dataset_index"][i])], "keys": batch["keys"][i]}

    return datasets.IterableDataset.from_generator(rows)

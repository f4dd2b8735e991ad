"""Loader throughput per worker and start-up time, side by side on the same tokens:
jam's loader, mosaicml-streaming (MDS), litdata (TokensLoader), webdataset, and raw numpy.memmap.

    python benchmarks/bench_loader.py [--samples 2048] [--seq-len 4096] [--repeat 5]

The same random uint16 tokens (samples of seq_len, as 4096-token training rows) are written once in
each tool's own format; each reader then delivers every sample once in one process (what one
dataloader worker does), files in the page cache. tokens/s = tokens delivered / seconds; start-up =
constructor to first sample. Anchors are pinned in requirements-bench.txt. mosaicml-streaming 0.13
imports transformers and torchvision at import time only for isinstance checks and example datasets;
when they are not installed this script puts tiny placeholders on sys.path so that it can run in the
project's environment without them (install the anchors with `pip install --no-deps` into a separate
`--target` directory and put it on PYTHONPATH, so they cannot change the project's pins).
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def placeholders(root: Path) -> None:
    files = {
        "transformers/__init__.py": "",
        "transformers/feature_extraction_utils.py": "class BatchFeature(dict):\n    pass\n",
        "transformers/tokenization_utils_base.py": "class BatchEncoding(dict):\n    pass\n",
        "transformers/models/__init__.py": "",
        "transformers/models/auto/__init__.py": "",
        "transformers/models/auto/tokenization_auto.py": "AutoTokenizer = None\n",
        "torchvision/__init__.py": "",
        "torchvision/datasets.py": "class VisionDataset:\n    pass\nclass CIFAR10:\n    pass\n",
        "torchvision/transforms/__init__.py": "",
        "torchvision/transforms/functional.py": "to_tensor = None\n",
    }
    for name in ("transformers", "torchvision"):
        if importlib.util.find_spec(name) is None:
            for rel, text in files.items():
                if rel.startswith(name):
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_text(text)
    sys.path.append(str(root))


# -- writers ---------------------------------------------------------------------------------------
def write_jam(root: Path, tokens: np.ndarray) -> dict[str, str]:
    from jamdata.formats.megatron import IndexedDatasetWriter
    from jamdata.formats.wds import TarShardWriter
    from jamdata.loader.testing import VOCAB
    from jamdata.manifest import build_manifest, describe_shard, write_manifest

    text = root / "jam-text"
    (text / "bench").mkdir(parents=True)
    shards = []
    per = 512
    for s in range(0, len(tokens), per):
        rel = f"bench/part-{s // per:05d}"
        w = IndexedDatasetWriter(str(text / rel), np.uint16)
        for row in tokens[s:s + per]:
            w.add_document(row)
        docs, toks = w.finalize()
        shards += [describe_shard(str(text), rel + ".idx", docs, toks, "bench"), describe_shard(str(text), rel + ".bin")]
    write_manifest(str(text), build_manifest("text_tokens", shards, {}, VOCAB))
    tars = root / "jam-tar"
    shards = []
    for s in range(0, len(tokens), per):
        rel = f"part-{s // per:05d}.tar"
        with TarShardWriter(str(tars / rel)) as w:
            for i, row in enumerate(tokens[s:s + per]):
                w.write(f"k{s + i:07d}", {"tokens.npy": row})
        shards.append(describe_shard(str(tars), rel, min(per, len(tokens) - s), int(tokens[s:s + per].size)))
    write_manifest(str(tars), build_manifest("image_caption", shards, {}, VOCAB))
    return {"text": str(text), "tar": str(tars)}


def write_mds(root: Path, tokens: np.ndarray) -> str:
    from streaming import MDSWriter

    out = root / "mds"
    with MDSWriter(out=str(out), columns={"tokens": "bytes"}, size_limit=1 << 26) as w:
        for row in tokens:
            w.write({"tokens": row.tobytes()})
    return str(out)


_TOKENS: np.ndarray | None = None


def _lit_item(i: int):
    import torch

    return torch.from_numpy(_TOKENS[i].astype(np.int64)).to(torch.int16) if False else torch.from_numpy(_TOKENS[i].view(np.int16).copy())


def write_litdata(root: Path, tokens: np.ndarray) -> str:
    global _TOKENS
    from litdata import TokensLoader, optimize

    _TOKENS = tokens
    out = root / "litdata"
    optimize(fn=_lit_item, inputs=list(range(len(tokens))), output_dir=str(out), chunk_size=len(tokens[0]) * 512,
             item_loader=TokensLoader(), num_workers=1, mode="overwrite", start_method="fork")
    return str(out)


# -- readers (each delivers every sample once; returns tokens delivered) -----------------------------
def read_memmap(paths: list[str], seq_len: int):
    """The limit: copy every sample out of np.memmap views of the same .bin files, nothing else."""
    mms = [np.memmap(p, dtype=np.uint16, mode="r") for p in paths]
    yield None
    total = 0
    for mm in mms:
        for i in range(len(mm) // seq_len):
            total += np.array(mm[i * seq_len:(i + 1) * seq_len]).size
    yield total


def read_memmap_batches(paths: list[str], seq_len: int, dtype: str = "int32"):
    """The same copy into the batch contract's tensors (tokens, bool mask, int32 segment ids),
    8 rows per batch, with none of the loader's order, mixture, packing or state."""
    import torch

    mms = [np.memmap(p, dtype=np.uint16, mode="r").view(np.ndarray) for p in paths]
    rows = [(mm, i) for mm in mms for i in range(len(mm) // seq_len)]
    yield None
    total = 0
    for s in range(0, len(rows) - 7, 8):
        tn = np.empty((8, seq_len), dtype=dtype)
        mn = np.empty((8, seq_len), dtype=bool)
        gn = np.empty((8, seq_len), dtype=np.int32)
        mn.fill(True)
        gn.fill(0)
        for r in range(8):
            mm, i = rows[s + r]
            tn[r] = mm[i * seq_len:(i + 1) * seq_len]
        batch = (torch.from_numpy(tn), torch.from_numpy(mn), torch.from_numpy(gn))
        total += batch[0].numel()
    yield total


def read_jam(dirs: dict, name: str, seq_len: int, n: int, verify: str):
    from jamdata.config import Config
    from jamdata.loader import build_loader

    cfg = Config({"loader": {"mixture": {name: 1}, "seq_len": seq_len, "global_batch_size": 8, "step_lanes": 1,
                             "steps_per_epoch": n // 8, "verify": verify}}).section("loader")
    lo = build_loader(cfg, {name: dirs[name]})
    it = iter(lo)
    next(it)
    yield None
    total = 0
    for b in it:
        total += b["tokens"].numel()
    yield total


def read_mds(path: str, seq_len: int, n: int):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=path, shuffle=False, batch_size=8)
    it = iter(ds)
    next(it)
    yield None
    total = 0
    for s in it:
        total += np.frombuffer(s["tokens"], np.uint16).size
    yield total


def read_litdata(path: str, seq_len: int, n: int):
    from litdata import StreamingDataset, TokensLoader

    ds = StreamingDataset(input_dir=path, item_loader=TokensLoader(block_size=seq_len), shuffle=False)
    it = iter(ds)
    next(it)
    yield None
    total = 0
    for t in it:
        total += t.numel()
    yield total


def read_wds(path: str, seq_len: int, n: int):
    import webdataset as wds

    urls = sorted(str(p) for p in Path(path).glob("*.tar"))
    it = iter(wds.WebDataset(urls, shardshuffle=False).decode())
    next(it)
    yield None
    total = 0
    for s in it:
        total += s["tokens.npy"].size
    yield total


def measure(gen) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    g = gen
    next(g)
    t1 = time.perf_counter()
    total = next(g)
    t2 = time.perf_counter()
    return t1 - t0, total / (t2 - t1), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds; each round runs every reader once, the median round is reported per reader")
    ap.add_argument("--skip", action="append", default=[], help="reader to leave out (mosaic, litdata, webdataset)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jam-bench-loader-"))
    placeholders(work / "placeholders")
    try:
        rng = np.random.default_rng(0)
        n, L = args.samples, args.seq_len
        tokens = rng.integers(0, 32000, (n, L), dtype=np.uint16)
        print(f"{n} samples x {L} tokens = {n * L / 1e6:.1f} M tokens ({tokens.nbytes / 1e6:.0f} MB uint16) under {work}")
        jam = write_jam(work, tokens)
        bins = sorted(str(p) for p in Path(jam["text"]).glob("bench/*.bin"))
        readers = {
            "raw numpy.memmap copy": lambda: read_memmap(bins, L),
            "raw memmap -> batch tensors (int32)": lambda: read_memmap_batches(bins, L, "int32"),
            "jam loader (.bin/.idx, verify=size)": lambda: read_jam(jam, "text", L, n, "size"),
            "jam loader (.bin/.idx, verify=sha256)": lambda: read_jam(jam, "text", L, n, "sha256"),
            "jam loader (tar, verify=size)": lambda: read_jam(jam, "tar", L, n, "size"),
            "webdataset (same tars)": lambda: read_wds(jam["tar"], L, n),
        }
        if "mosaic" not in args.skip:
            mds = write_mds(work, tokens)
            readers["mosaicml-streaming (MDS)"] = lambda: read_mds(mds, L, n)
        if "litdata" not in args.skip:
            lit = write_litdata(work, tokens)
            readers["litdata (TokensLoader)"] = lambda: read_litdata(lit, L, n)
        runs: dict[str, list] = {name: [] for name in readers}
        for _ in range(args.repeat):  # round-robin, so that a noisy moment hits every reader alike
            for name, make in readers.items():
                runs[name].append(measure(make()))
        results = {}
        for name, rs in runs.items():
            mid = len(rs) // 2
            results[name] = (sorted(r[0] for r in rs)[mid], sorted(r[1] for r in rs)[mid], rs[0][2])
        raw = results["raw numpy.memmap copy"][1]
        ours = results["jam loader (.bin/.idx, verify=size)"][1]
        print(f"\n{'reader (1 process = 1 worker)':40s} {'start-up s':>10s} {'M tokens/s':>11s} {'jam/this':>9s} {'this/raw':>9s}")
        for name, (start, tps, total) in results.items():
            print(f"{name:40s} {start:10.3f} {tps / 1e6:11.1f} {ours / tps:9.2f} {tps / raw:9.2f}")
        batch = results["raw memmap -> batch tensors (int32)"][1]
        anchors = {k: v[1] for k, v in results.items() if k.split(" ")[0] in ("webdataset", "mosaicml-streaming", "litdata")}
        best = max(anchors, key=anchors.get) if anchors else None
        print(f"\njam loader (.bin/.idx) vs raw numpy.memmap copy: {raw / ours:.2f}x slower (target <= 2x: "
              f"{'met' if raw / ours <= 2 else 'MISSED'}); vs raw memmap into the batch tensors: {batch / ours:.2f}x slower")
        if best:
            print(f"jam loader vs the fastest anchor ({best}): {ours / anchors[best]:.2f}x "
                  f"(target > 1: {'met' if ours > anchors[best] else 'MISSED'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

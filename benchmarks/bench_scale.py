"""Scale benchmark: text-clean and text-sample at 1x, 4x and 16x a base corpus, one and two workers.

The corpus is built from the real web documents of ../shared/corpus (CC-MAIN-2019-30 WET documents
and C4 samples): each copy of a document gets a new id and URL and has every eighth word replaced
by another word of the corpus, so copies are distinct documents (5-gram Jaccard far below the
MinHash threshold) that still read like the web. Planted into every size:

- exact duplicates (1% of the documents, verbatim under another id),
- a hot bucket: `--hot` near-identical boilerplate pages (one template, a different reference
  number each), which all fall into the same MinHash buckets: dedup must keep exactly 1,
- a chain of `--chain` near-duplicates (each the previous one with one word replaced, so the two
  ends are unrelated): one connected component, dedup must keep exactly 1.

Files are C4 JSON lines (.json.gz), `--file-mb` of text each, so reads spread over the workers.
For each size and worker count it runs the real text-clean (demo filters and dedup settings) and
text-sample (the corpus's LLaMA-style SentencePiece tokenizer, a budget of half the clean tokens)
pipelines with the local runner and reports MB/s per core (input text MB / wall s / workers, and /
CPU s of all processes), the peak RSS of each process of the run (driver, Beam SDK workers), the
dedup result on the planted cases, and text-sample tokens written against the plan.

    python benchmarks/bench_scale.py --quick    # a few minutes: base 1 MB, hot bucket 2,000
    python benchmarks/bench_scale.py            # base 12 MB; 16x: ~360 MB of text with a hot bucket
                                                # of 100,000 pages (scaled down at 1x, 4x); 16x with
                                                # two workers only (--one-worker-max 16 for both)

Results: benchmarks/results/bench_scale[-quick].json and .md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from corpus import CORPUS, c4_pages  # noqa: E402 (benchmarks/corpus.py)
RESULTS = REPO / "benchmarks" / "results"
PLANTED = "wikipedia"  # the source the planted hot bucket and chain are read as
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HOT_TEMPLATE = ("Welcome to our online store, where you will find the best prices on quality products for "
                "your home and garden. Our friendly team is here to help you choose the right item, and we "
                "ship every order within two working days. Sign up for our newsletter to hear about new "
                "arrivals, seasonal offers and exclusive discounts before anyone else. Returns are free "
                "within thirty days, and every purchase is covered by our satisfaction guarantee. If you "
                "have any questions about this product, please contact our customer service team by email "
                "or telephone, and we will be happy to answer them as soon as we can.\n"
                "Our shop was founded by a small family business more than twenty years ago, and we still "
                "believe that good service matters as much as a good price. Every product in our catalogue "
                "has been tested by our own staff before it is offered to our customers. We work directly "
                "with manufacturers across the country, which allows us to keep our prices low while "
                "supporting local jobs and sustainable production. Gift wrapping is available for a small "
                "extra charge, and you can add a personal message to your parcel at the checkout.\n"
                "Delivery is free for orders over fifty pounds, and most parcels arrive the next day when "
                "you order before noon. You can track your order online at any time, and our drivers will "
                "leave a note if nobody is at home. Larger items such as furniture and garden sheds are "
                "delivered by our own van, and the driver can carry them to the room of your choice. We also "
                "offer a collection service for old furniture, which we recycle or donate to local charities "
                "whenever possible.")


def perturb(text: str, rng: random.Random, vocab: list[str]) -> str:
    """Every eighth word (from a random phase) replaced by a common corpus word, line breaks kept:
    5-gram Jaccard to the original about 0.2, still English to the language filter."""
    lines = []
    phase = rng.randrange(8)
    for line in text.split("\n"):
        words = line.split(" ")
        for i in range(phase, len(words), 8):
            if words[i] and not words[i][-1:] in ".!?":
                words[i] = rng.choice(vocab)
        lines.append(" ".join(words))
    return "\n".join(lines)


def chain_docs(n: int, base: list[str], rng: random.Random, vocab: list[str]) -> list[str]:
    """n documents, each the previous with one word replaced: a real corpus document of 600-1,500
    words, the words replaced at a stride that visits every position, so the two ends of a long
    chain share almost nothing yet every neighbour pair is a near-duplicate."""
    text = min((t for t in base if 600 <= len(t.split()) <= 1500), key=lambda t: len(t.split()))
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(li, wi) for li, ws in enumerate(lines) for wi, w in enumerate(ws) if w.isalpha()]
    out = []
    for i in range(n):
        li, wi = slots[(i * 37) % len(slots)]
        lines[li][wi] = rng.choice(vocab)
        out.append("\n".join(" ".join(ws) for ws in lines))
    return out


def build_corpus(out: Path, target_mb: float, hot: int, chain: int, file_mb: float, seed: int) -> dict:
    """C4-format files: `planted/` (hot bucket, chain) and `c4/` (about `target_mb` MB of distinct
    documents and 1% exact duplicates)."""
    rng = random.Random(seed)
    base = c4_pages()
    freq: dict[str, int] = {}
    for t in base:
        for w in t.split():
            if w.isascii() and w.isalpha() and w.islower() and 2 < len(w) < 12:
                freq[w] = freq.get(w, 0) + 1
    vocab = sorted(sorted(freq, key=lambda w: -freq[w])[:4000])  # common English words
    out.mkdir(parents=True, exist_ok=True)
    files, buf, buf_bytes, total = {"planted": [], "c4": []}, [], 0, 0
    where = "planted"

    def flush():
        nonlocal buf, buf_bytes
        if buf:
            (out / where).mkdir(exist_ok=True)
            path = out / where / f"part-{len(files[where]):05d}.json.gz"
            path.write_bytes(gzip.compress("".join(buf).encode(), compresslevel=1))
            files[where].append(str(path))
            buf, buf_bytes = [], 0

    def add(kind: str, i: int, text: str):
        nonlocal buf_bytes, total
        buf.append(json.dumps({"id": f"{kind}-{i:07d}", "text": text, "url": f"https://{kind}.example/{i}",
                               "timestamp": "2019-07-20T00:00:00Z"}) + "\n")
        size = len(text.encode())
        buf_bytes += size
        total += size
        if buf_bytes >= file_mb * 1e6:
            flush()

    planted = {"hot": hot, "chain": chain, "exact": 0}
    for i in range(hot):
        # a word pair, not a number: exact dedup maps digits to 0, and these must reach MinHash
        add("hot", i, f"{HOT_TEMPLATE}\nThis is catalogue page {vocab[i % len(vocab)]} {vocab[i // len(vocab)]} of our shop.")
    for i, text in enumerate(chain_docs(chain, base, rng, vocab)):
        add("chain", i, text)
    flush()
    i, planted_bytes, where = 0, total, "c4"
    while total - planted_bytes < target_mb * 1e6:  # the size is that of the distinct documents
        text = perturb(base[i % len(base)], rng, vocab)
        add("doc", i, text)
        if rng.random() < 0.01:
            add("exact", planted["exact"], text)
            planted["exact"] += 1
        i += 1
    flush()
    return {"files": files, "mb": total / 1e6, "planted_mb": planted_bytes / 1e6, "docs": i + hot + chain + planted["exact"],
            "planted": planted}


class RssSampler:
    """Peak RSS of this process and every descendant (Beam SDK workers, extraction children)."""

    def __init__(self, every_s: float = 0.25):
        self.every, self.peak, self.names, self.stop = every_s, {}, {}, threading.Event()
        self.me = psutil.Process()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for p in [self.me] + self.me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                    self.names.setdefault(p.pid, " ".join(p.cmdline()[1:4])[:80])
                except psutil.Error:
                    pass
            self.stop.wait(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict:
        me = self.me.pid
        workers = {pid: v for pid, v in self.peak.items()  # (not the `sh -c` wrappers Beam starts them with)
                   if pid != me and "sdk_worker" in self.names.get(pid, "") and v > 32 << 20}
        if not workers:  # one worker: Beam runs the work in this process
            workers = {me: self.peak.get(me, 0)}
        return {"driver_mb": round(self.peak.get(me, 0) / 2**20, 1),
                "worker_mb": sorted(round(v / 2**20, 1) for v in workers.values()),
                "max_worker_mb": round(max(workers.values(), default=0) / 2**20, 1)}


def cpu_seconds() -> float:
    """CPU seconds of this process and its children so far (live and reaped)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for p in psutil.Process().children(recursive=True):
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def demo_clean() -> dict:
    clean = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["text"]["clean"]
    # the planted cases are their own source (named `wikipedia`: a MinHash source the config
    # knows) with a length filter only, so that no quality filter takes part of the chain away
    chains = clean["filters"]["chains"] | {PLANTED: ["min_length"]}
    return {"filters": clean["filters"] | {"chains": chains}, "dedup": clean["dedup"],
            "shard_bytes": 256 << 20, "line_dedup_min_docs": 3}


def planted_result(run_dir: Path) -> dict:
    kept = {"hot": 0, "chain": 0, "exact": 0}
    for f in sorted((run_dir / "text-clean").glob("*/*.parquet")):
        for url in pq.read_table(f, columns=["url"]).column("url").to_pylist():
            kind = url.split("//")[1].split(".")[0]
            if kind in kept:
                kept[kind] += 1
    rejected: dict = {}
    reasons: dict = {}
    for f in sorted((run_dir / "text-clean-rejects").glob("*/*.parquet")):
        for stage, reason in zip(*pq.read_table(f, columns=["stage", "reason"]).to_pydict().values()):
            rejected[stage] = rejected.get(stage, 0) + 1
            why = f"{stage}: {reason.split(':')[0][:40]}"
            reasons[why] = reasons.get(why, 0) + 1
    top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:8])
    return {"kept": kept, "rejected_by_stage": rejected, "top_reject_reasons": top}


def run_once(corpus: dict, workers: int, run_dir: Path, tokenizer: Path) -> dict:
    from jamdata.config import Config
    from jamdata.manifest import read_manifest
    from pipelines.stages import StageContext
    from pipelines import text_clean, text_sample

    cfg = {"run": {"seed": 1}, "vqvae": {"codebook_size": 64},
           "text": {"sources": {{"planted": PLANTED}.get(d, d): {"format": "c4", "paths": paths}
                                for d, paths in corpus["files"].items()},
                    "clean": demo_clean()}}
    row = {"workers": workers, "input_mb": round(corpus["mb"], 2), "docs_in": corpus["docs"]}
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with RssSampler() as rss:
        text_clean.run(Config(json.loads(json.dumps(cfg))), run_dir / "text-clean", run_dir / "text-clean-rejects",
                       workers, log_fn=lambda *_: None)
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    m = read_manifest(str(run_dir / "text-clean"))
    fun = m["summary"]["funnel"]["c4"]
    planted = m["summary"]["funnel"][PLANTED]
    row["clean"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                    "mb_s_per_core": round(corpus["mb"] / wall / workers, 3),
                    "mb_per_cpu_s": round(corpus["mb"] / cpu, 3), "rss": rss.summary(),
                    "docs_out": fun["dedup"]["docs_out"] + planted["dedup"]["docs_out"], "mb_out": round(fun["dedup"]["bytes_out"] / 1e6, 2),
                    "shards": len(m["shards"]), **planted_result(run_dir)}
    clean_mb = fun["dedup"]["bytes_out"] / 1e6
    budget = max(1000, int(fun["dedup"]["bytes_out"] / 4.2 / 2))  # about half the clean tokens
    cfg["text"]["sample"] = {"budget_tokens": budget, "shares": {"c4": 100.0}, "epochs": {"c4": 1.0},
                             "shard_tokens": max(1000, budget // 4), "count": "exact",
                             "input": str(run_dir / "text-clean"), "tokenizer": str(tokenizer)}
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with RssSampler() as rss:
        text_sample.run_stage(StageContext(Config(json.loads(json.dumps(cfg))), str(run_dir), workers=workers))
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    s = read_manifest(str(run_dir / "text-tokens"))["summary"]
    src = s["sources"]["c4"] if "sources" in s else s["c4"]
    row["sample"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "mb_s_per_core": round(clean_mb / wall / workers, 3), "mb_per_cpu_s": round(clean_mb / cpu, 3),
                     "rss": rss.summary(), "tokens_planned": src["target"], "tokens_written": src["tokens"]}
    return row


def markdown(result: dict) -> str:
    lines = [f"# bench_scale ({result['mode']})", "", f"{result['machine']}; base {result['base_mb']} MB; "
             f"planted: hot bucket {result['hot']} at the largest size (scaled with the size), chain {result['chain']}, "
             "exact 1%. MB/s/core = input MB / wall s / workers (shared machine: see MB/CPU-s).", "",
             "| size | MB in | hot | workers | clean s | clean MB/s/core | clean MB/CPU-s | max worker RSS MB | driver RSS MB "
             "| hot kept | chain kept | docs out | sample s | tokens plan | tokens written |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        c, s = r["clean"], r["sample"]
        lines.append(f"| {r['size']}x | {r['input_mb']} | {r['hot']} | {r['workers']} | {c['wall_s']} | {c['mb_s_per_core']} | "
                     f"{c['mb_per_cpu_s']} | {max(c['rss']['max_worker_mb'], s['rss']['max_worker_mb'])} | "
                     f"{max(c['rss']['driver_mb'], s['rss']['driver_mb'])} | {c['kept']['hot']} | {c['kept']['chain']} | "
                     f"{c['docs_out']} | {s['wall_s']} | {s['tokens_planned']} | {s['tokens_written']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run: base 1 MB, hot bucket 2,000")
    ap.add_argument("--base-mb", type=float, default=None, help="1x size in MB of text (default 12; quick 1)")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--one-worker-max", type=int, default=None,
                    help="largest size also run with one worker (default 4: the 16x run uses two, to fit "
                         "15 minutes on 2 cores; quick: all)")
    ap.add_argument("--hot", type=int, default=None,
                    help="hot-bucket pages at the largest size, scaled down with the size (default 100,000; quick 2,000)")
    ap.add_argument("--chain", type=int, default=1000)
    ap.add_argument("--file-mb", type=float, default=None, help="text MB per input file (default 16; quick 1)")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    base = args.base_mb or (1.0 if args.quick else 12.0)
    hot = args.hot if args.hot is not None else (2000 if args.quick else 100_000)
    one_max = args.one_worker_max if args.one_worker_max is not None else (10**9 if args.quick else 4)
    file_mb = args.file_mb or (1.0 if args.quick else 16.0)
    tokenizer = CORPUS / "tokenizers" / "mistral-7b-v0.1-tokenizer.model"
    if not tokenizer.exists():
        sys.exit(f"real sample corpus not found at {CORPUS} (set JAM_CORPUS)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    result = {"mode": "quick" if args.quick else "default", "base_mb": base, "hot": hot, "chain": args.chain,
              "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB", "runs": []}
    t_start = time.monotonic()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        for size in sizes:
            size_hot = hot * size // max(sizes)
            corpus = build_corpus(tmp / f"corpus-{size}x", base * size, size_hot, args.chain, file_mb, seed=size)
            print(f"{size}x: {corpus['mb']:.1f} MB, {corpus['docs']:,} docs, "
                  f"{sum(map(len, corpus['files'].values()))} files", flush=True)
            for workers in [int(w) for w in args.workers.split(",")]:
                if workers == 1 and size > one_max and workers != max(int(w) for w in args.workers.split(",")):
                    continue
                run_dir = tmp / f"run-{size}x-{workers}w"
                row = {"size": size, "hot": size_hot, "chain": args.chain, **run_once(corpus, workers, run_dir, tokenizer)}
                result["runs"].append(row)
                c = row["clean"]
                print(f"  {workers} worker(s): clean {c['wall_s']} s ({c['mb_s_per_core']} MB/s/core), "
                      f"max worker RSS {c['rss']['max_worker_mb']} MB, hot kept {c['kept']['hot']}, "
                      f"chain kept {c['kept']['chain']}; sample {row['sample']['wall_s']} s, "
                      f"{row['sample']['tokens_written']:,}/{row['sample']['tokens_planned']:,} tokens", flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(tmp / f"corpus-{size}x", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - t_start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_scale-quick" if args.quick else "bench_scale"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

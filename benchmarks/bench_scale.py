"""Scale benchmark: text-clean and text-sample at 1x, 4x and 16x a base corpus, one and two workers.

The corpus mixes every source of the reference run in its raw format, grown from the real
documents of ../shared/corpus (benchmarks/scale_corpus.py): Common Crawl WET and WARC (HTML),
C4 JSON lines, a Wikipedia XML dump (.bz2), Gutenberg books (.txt), arXiv LaTeX (a bulk tar of
gzip'd papers). Each copy of a document gets a new id/URL/title and every sixth plain word
replaced, so copies are distinct documents (5-gram Jaccard far below the MinHash threshold) that
still read like the source. Planted into every size, read as part of the `wikipedia` source (C4
JSON lines; that source runs the length filter only, so no quality filter takes part of them):

- exact duplicates: 1% of the documents as pairs (a real web page and a verbatim copy of it),
- a hot bucket: `--hot` near-identical boilerplate pages (one template, a different reference
  number each), which all fall into the same MinHash buckets: dedup must keep exactly 1,
- a chain of `--chain` near-duplicates (each the previous one with one word replaced, so the two
  ends are unrelated): one connected component, dedup must keep exactly 1.

Files hold about `--file-mb` of text each, so reads spread over the workers. For each size and
worker count it runs the real text-clean (demo filters and dedup settings) and text-sample (the
corpus's LLaMA-style SentencePiece tokenizer, LLaMA shares, a budget of half the clean tokens,
fixed `shard_tokens` and `part_tokens`) pipelines with the local runner and reports MB/s per core
(input text MB / wall s / workers, and / CPU s of all processes), the peak RSS of each process of
the run (driver, Beam SDK workers), the dedup result on the planted cases, and text-sample tokens
written against the plan, per source.

    python benchmarks/bench_scale.py --quick    # a few minutes: base 1 MB, hot bucket 2,000
    python benchmarks/bench_scale.py            # base 6 MB; 16x: ~100 MB of distinct text and a
                                                # hot bucket of 100,000 pages (scaled down at 1x,
                                                # 4x); one worker at 1x only (--one-worker-max 4
                                                # adds 4x: about 16 minutes in all on 2 cores)

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
from scale_corpus import build_sources, common_words, perturb  # noqa: E402 (benchmarks/scale_corpus.py)

RESULTS = REPO / "benchmarks" / "results"
PLANTED = "wikipedia"  # the source the planted hot bucket and chain are read as
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HOT_TEMPLATE = (
    "Welcome to our online store, where you will find the best prices on quality products for "
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
    "whenever possible."
)


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
    """The sources (about `target_mb` MB of distinct text, benchmarks/scale_corpus.py) and
    `planted/` (hot bucket, chain, exact pairs: C4 JSON lines)."""
    rng = random.Random(seed)
    sources, per_kind = build_sources(out, target_mb, file_mb, seed)
    base = c4_pages()
    vocab = common_words(base)
    (out / "planted").mkdir(parents=True, exist_ok=True)
    files, buf, buf_bytes, total = [], [], 0, 0

    def flush():
        nonlocal buf, buf_bytes
        if buf:
            path = out / "planted" / f"part-{len(files):05d}.json.gz"
            path.write_bytes(gzip.compress("".join(buf).encode(), compresslevel=1))
            files.append(str(path))
            buf, buf_bytes = [], 0

    def add(kind: str, i: int, text: str):
        nonlocal buf_bytes, total
        buf.append(
            json.dumps(
                {
                    "id": f"{kind}-{i:07d}",
                    "text": text,
                    "url": f"https://{kind}.example/{i}",
                    "timestamp": "2019-07-20T00:00:00Z",
                }
            )
            + "\n"
        )
        size = len(text.encode())
        buf_bytes += size
        total += size
        if buf_bytes >= file_mb * 1e6:
            flush()

    docs = 0
    for i in range(hot):
        # a word pair, not a number: exact dedup maps digits to 0, and these must reach MinHash
        add(
            "hot",
            i,
            f"{HOT_TEMPLATE}\nThis is catalogue page {vocab[i % len(vocab)]} {vocab[i // len(vocab)]} of our shop.",
        )
    for i, text in enumerate(chain_docs(chain, base, rng, vocab)):
        add("chain", i, text)
    pairs = max(1, int(target_mb * 1e6 / 4000 / 100))  # 1% of documents of about 4 kB
    long_enough = [t for t in base if len(t.split()) >= 50]  # both copies pass the length filter
    for i in range(pairs):
        text = perturb(long_enough[i % len(long_enough)], rng, vocab)
        add("pair", i, text)
        add("exact", i, text)
    flush()
    sources.setdefault(PLANTED, {"inputs": []})["inputs"].append({"format": "c4", "paths": files})
    docs = hot + chain + 2 * pairs
    return {
        "sources": sources,
        "mb": (sum(per_kind.values()) * 1e6 + total) / 1e6,
        "planted_mb": total / 1e6,
        "per_kind_mb": {k: round(v, 2) for k, v in per_kind.items()},
        "planted_docs": docs,
        "planted": {"hot": hot, "chain": chain, "exact_pairs": pairs},
        "files": sum(len(i["paths"]) for src in sources.values() for i in src["inputs"]),
    }


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
        workers = {
            pid: v
            for pid, v in self.peak.items()  # (not the `sh -c` wrappers Beam starts them with)
            if pid != me and "sdk_worker" in self.names.get(pid, "") and v > 32 << 20
        }
        if not workers:  # one worker: Beam runs the work in this process
            workers = {me: self.peak.get(me, 0)}
        return {
            "driver_mb": round(self.peak.get(me, 0) / 2**20, 1),
            "worker_mb": sorted(round(v / 2**20, 1) for v in workers.values()),
            "max_worker_mb": round(max(workers.values(), default=0) / 2**20, 1),
        }


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


def demo_clean(shard_mb: float) -> dict:
    clean = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["text"]["clean"]
    # the planted cases are read as part of `wikipedia` (a MinHash source), which runs a length
    # filter only, so that no quality filter takes part of the chain away
    chains = clean["filters"]["chains"] | {PLANTED: ["min_length"]}
    return {
        "filters": clean["filters"] | {"chains": chains},
        "dedup": clean["dedup"],
        "shard_bytes": int(shard_mb * 2**20),
        "line_dedup_min_docs": 3,
    }


def planted_result(run_dir: Path) -> dict:
    kept = {"hot": 0, "chain": 0, "pair": 0, "exact": 0}
    for f in sorted((run_dir / "text-clean").glob("*/*.parquet")):
        for url in pq.read_table(f, columns=["url"]).column("url").to_pylist():
            kind = (url or "//").split("//")[1].split(".")[0]
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


def run_once(corpus: dict, workers: int, run_dir: Path, tokenizer: Path, shard_mb: float, part_tokens: int) -> dict:
    from jamdata.config import Config
    from jamdata.manifest import read_manifest
    from pipelines.stages import StageContext
    from pipelines import text_clean, text_sample, text_sample_settings

    cfg = {
        "run": {"seed": 1},
        "vqvae": {"codebook_size": 64},
        "text": {"sources": corpus["sources"], "clean": demo_clean(shard_mb)},
    }
    row = {"workers": workers, "input_mb": round(corpus["mb"], 2), "per_kind_mb": corpus["per_kind_mb"]}
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with RssSampler() as rss:
        text_clean.run(
            Config(json.loads(json.dumps(cfg))),
            run_dir / "text-clean",
            run_dir / "text-clean-rejects",
            workers,
            log_fn=lambda *_: None,
        )
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    m = read_manifest(str(run_dir / "text-clean"))
    funnel = m["summary"]["funnel"]
    row["clean"] = {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "mb_s_per_core": round(corpus["mb"] / wall / workers, 3),
        "mb_per_cpu_s": round(corpus["mb"] / cpu, 3),
        "rss": rss.summary(),
        "docs_in": sum(f["read"]["docs_out"] for f in funnel.values()),
        "docs_out": {s: f["dedup"]["docs_out"] for s, f in funnel.items()},
        "mb_out": round(sum(f["dedup"]["bytes_out"] for f in funnel.values()) / 1e6, 2),
        "shards": len(m["shards"]),
        **planted_result(run_dir),
    }
    clean_bytes = sum(f["dedup"]["bytes_out"] for f in funnel.values())
    budget = max(1000, int(clean_bytes / 4.2 / 2))  # about half the clean tokens
    shares = {s: v for s, v in text_sample_settings.LLAMA_SHARES.items() if s in funnel}
    cfg["text"]["sample"] = {
        "budget_tokens": budget,
        "shares": shares,
        "epochs": {s: 8 for s in shares},
        "shard_tokens": 4 * part_tokens,
        "part_tokens": part_tokens,
        "count": "exact",
        "input": str(run_dir / "text-clean"),
        "tokenizer": str(tokenizer),
    }
    cpu0, t0 = cpu_seconds(), time.monotonic()
    with RssSampler() as rss:
        text_sample.run_stage(StageContext(Config(json.loads(json.dumps(cfg))), str(run_dir), workers=workers))
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    tm = read_manifest(str(run_dir / "text-tokens"))
    per = tm["summary"]["sources"]
    parts = [sh["tokens"] for sh in tm["shards"] if sh["path"].endswith(".idx")]
    row["sample"] = {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "mb_s_per_core": round(clean_bytes / 1e6 / wall / workers, 3),
        "mb_per_cpu_s": round(clean_bytes / 1e6 / cpu, 3),
        "rss": rss.summary(),
        "tokens_planned": sum(r["target"] for r in per.values()),
        "tokens_written": sum(r["tokens"] for r in per.values()),
        "per_source": {
            s: {
                "target": r["target"],
                "tokens": r["tokens"],
                "error": r["error"],
                "shards": r.get("shards"),
                "parts": r.get("parts"),
            }
            for s, r in per.items()
        },
        "parts": len(parts),
        "max_part_tokens": max(parts, default=0),
    }
    return row


def markdown(result: dict) -> str:
    lines = [
        f"# bench_scale ({result['mode']})",
        "",
        f"{result['machine']}; base {result['base_mb']} MB of distinct text (commoncrawl WET + WARC, c4, "
        f"wikipedia XML, books, arXiv LaTeX: benchmarks/scale_corpus.py); planted: hot bucket {result['hot']} "
        f"at the largest size (scaled with the size), chain {result['chain']}, 1% exact pairs; parquet shards "
        f"of {result['shard_mb']} MiB, token parts of {result['part_tokens']:,} tokens. MB/s/core = input MB / "
        "wall s / workers (shared machine: see MB/CPU-s). RSS: peak of each Beam worker process (one worker: "
        "the driver, which then runs the work).",
        "",
        "| size | MB in | hot | workers | clean s | clean MB/s/core | clean MB/CPU-s | clean worker RSS MB "
        "| sample worker RSS MB | driver RSS MB | hot kept | chain kept | exact pairs kept once | docs out "
        "| sample s | sample MB/CPU-s | tokens plan | tokens written | worst source error | parts | max part tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        c, s = r["clean"], r["sample"]
        k = c["kept"]
        worst = max(s["per_source"].items(), key=lambda kv: abs(kv[1]["error"]))
        lines.append(
            f"| {r['size']}x | {r['input_mb']} | {r['hot']} | {r['workers']} | {c['wall_s']} | {c['mb_s_per_core']} | "
            f"{c['mb_per_cpu_s']} | {c['rss']['max_worker_mb']} | {s['rss']['max_worker_mb']} | "
            f"{max(c['rss']['driver_mb'], s['rss']['driver_mb'])} | {k['hot']} | {k['chain']} | "
            f"{k['pair'] + k['exact']}/{r['exact_pairs']} | {sum(c['docs_out'].values())} | {s['wall_s']} | "
            f"{s['mb_per_cpu_s']} | {s['tokens_planned']} | {s['tokens_written']} | "
            f"{worst[0]} {worst[1]['error']:+} | {s['parts']} | {s['max_part_tokens']} |"
        )
    lines += [
        "",
        "Input text MB per kind (largest size): "
        + ", ".join(f"{k} {v}" for k, v in result["runs"][-1]["per_kind_mb"].items())
        if result["runs"]
        else "",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run: base 1 MB, hot bucket 2,000")
    ap.add_argument("--base-mb", type=float, default=None, help="1x size in MB of distinct text (default 6; quick 1)")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument(
        "--one-worker-max",
        type=int,
        default=None,
        help="largest size also run with one worker (default 1: the 4x and 16x runs use two, "
        "to fit 15 minutes on 2 cores; quick: all)",
    )
    ap.add_argument(
        "--hot",
        type=int,
        default=None,
        help="hot-bucket pages at the largest size, scaled down with the size (default 100,000; quick 2,000)",
    )
    ap.add_argument("--chain", type=int, default=1000)
    ap.add_argument("--file-mb", type=float, default=None, help="text MB per input file (default 16; quick 1)")
    ap.add_argument(
        "--shard-mb",
        type=float,
        default=32.0,
        help="text.clean.shard_bytes in MiB: one parquet shard is one element of one worker",
    )
    ap.add_argument("--part-tokens", type=int, default=250_000, help="text.sample.part_tokens (shards: 4 parts)")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    base = args.base_mb or (1.0 if args.quick else 6.0)
    hot = args.hot if args.hot is not None else (2000 if args.quick else 100_000)
    one_max = args.one_worker_max if args.one_worker_max is not None else (10**9 if args.quick else 1)
    file_mb = args.file_mb or (1.0 if args.quick else 16.0)
    tokenizer = CORPUS / "tokenizers" / "mistral-7b-v0.1-tokenizer.model"
    if not tokenizer.exists():
        sys.exit(f"real sample corpus not found at {CORPUS} (set JAM_CORPUS)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    result = {
        "mode": "quick" if args.quick else "default",
        "base_mb": base,
        "hot": hot,
        "chain": args.chain,
        "shard_mb": args.shard_mb,
        "part_tokens": args.part_tokens,
        "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "runs": [],
    }
    t_start = time.monotonic()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        for size in sizes:
            size_hot = hot * size // max(sizes)
            corpus = build_corpus(tmp / f"corpus-{size}x", base * size, size_hot, args.chain, file_mb, seed=size)
            print(
                f"{size}x: {corpus['mb']:.1f} MB ({corpus['per_kind_mb']}, planted {corpus['planted_mb']:.1f}), "
                f"{corpus['files']} files",
                flush=True,
            )
            for workers in [int(w) for w in args.workers.split(",")]:
                if workers == 1 and size > one_max and workers != max(int(w) for w in args.workers.split(",")):
                    continue
                run_dir = tmp / f"run-{size}x-{workers}w"
                row = {
                    "size": size,
                    "hot": size_hot,
                    "chain": args.chain,
                    "exact_pairs": corpus["planted"]["exact_pairs"],
                    **run_once(corpus, workers, run_dir, tokenizer, args.shard_mb, args.part_tokens),
                }
                result["runs"].append(row)
                c, s = row["clean"], row["sample"]
                print(
                    f"  {workers} worker(s): clean {c['wall_s']} s ({c['mb_s_per_core']} MB/s/core), "
                    f"max worker RSS {c['rss']['max_worker_mb']} MB, kept {c['kept']}; sample {s['wall_s']} s, "
                    f"max worker RSS {s['rss']['max_worker_mb']} MB, {s['tokens_written']:,}/{s['tokens_planned']:,} "
                    f"tokens in {s['parts']} parts",
                    flush=True,
                )
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

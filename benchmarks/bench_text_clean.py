"""Text filters and MinHash: this project against datatrove and datasketch, side by side.

Input: the real web pages of ../shared/corpus (CC-MAIN-2019-30 WET documents and C4 samples),
repeated to --mb megabytes. Times are CPU seconds of this one process, so figures are per core
and do not depend on what else the machine runs.

    python benchmarks/bench_text_clean.py            # ~2 minutes on an idle machine
    python benchmarks/bench_text_clean.py --mb 300   # a few hundred MB (datatrove still runs on
                                                     # --anchor-passes copies, its rate is per MB)
Prints docs/s and MB/s per core for: C4 + Gopher quality + Gopher repetition (both tools, same
parameters: the C4 paper's 5 words per line and 3 sentences), the share of documents on which the
two make the same keep/drop decision, MinHash signatures (ours, datatrove's, datasketch's
`MinHash.bulk`), our whole clean + filter + MinHash chain, and the peak memory of the
MinHash/LSH stage at two input sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from corpus import CORPUS, c4_pages  # noqa: E402 (benchmarks/corpus.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mb_of(texts) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def cpu(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def row(name: str, n_docs: int, mb: float, secs: float) -> dict:
    r = {"name": name, "docs_s": n_docs / secs, "mb_s": mb / secs, "mb": mb, "secs": secs}
    print(f"  {name:<46} {r['docs_s']:>10.0f} {r['mb_s']:>10.2f} {mb:>8.1f} {secs:>8.1f}")
    return r


# ---- this project ------------------------------------------------------------------------------
def jam_filter_chain():
    from jamdata.text.filters import C4Filter, GopherQualityFilter, GopherRepetitionFilter

    return [C4Filter(), GopherQualityFilter(), GopherRepetitionFilter()]


def jam_filters(texts, chain):
    from jamdata.text.filters import apply_chain

    return [apply_chain(t, chain)[1] is None for t in texts]


def jam_minhash(texts, passes: int = 1, batch: int = 256):
    from jamdata.text.minhash import MinHasher

    per = len(texts) // passes
    sigs = []
    for p in range(passes):  # a fresh hasher (cold word cache) per copy of the data
        mh = MinHasher(num_perm=128, ngram=5)
        chunk = texts[p * per : (p + 1) * per]
        for i in range(0, len(chunk), batch):
            sigs.append(mh.signatures(chunk[i : i + batch])[0])
    return sigs


def jam_full(texts, batch: int = 256):
    """normalise -> all six web filters (incl. language id, quality score) -> MinHash of kept docs."""
    from jamdata.config import Config
    from jamdata.text.filters import apply_chain, build_filter_chain
    from jamdata.text.minhash import MinHasher
    from jamdata.text.normalize import normalize_text

    chain = build_filter_chain(Config({}, "text.clean.filters"), "commoncrawl")
    mh = MinHasher()
    kept = []
    for t in texts:
        v, failed = apply_chain(normalize_text(t), chain)
        if failed is None:
            kept.append(v.text)
        if len(kept) >= batch:
            mh.signatures(kept)
            kept = []
    if kept:
        mh.signatures(kept)


# ---- anchors -----------------------------------------------------------------------------------
def datatrove_filters(texts):
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    chain = [
        C4QualityFilter(min_num_sentences=3, min_words_per_line=5),
        GopherQualityFilter(),
        GopherRepetitionFilter(),
    ]

    def keep(text):
        doc = Document(text=text, id="x")
        for f in chain:
            r = f.filter(doc)
            if r is False or (isinstance(r, tuple) and not r[0]):
                return False
        return True

    keep("Warm up the tokenizer. It loads once.")
    return keep, chain


def datatrove_minhash_step():
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    # its default xxhash shingle hash passes str to xxhash, which current xxhash refuses: use sha1
    cfg = MinhashConfig(num_buckets=8, hashes_per_bucket=16, n_grams=5, hash_config=HashConfig(64, "sha1"))
    step = MinhashDedupSignature(output_folder="/tmp/jam-bench-dt-minhash", config=cfg)
    step.get_signature(step.get_shingles("warm up the word tokenizer once before timing it"))
    return step


def datasketch_bulk(texts):
    from datasketch import MinHash

    from jamdata.text.minhash import normalize_words

    sets = []
    for t in texts:
        w = normalize_words(t)
        sets.append({" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))})
    return MinHash.bulk(sets, num_perm=128)


# ---- memory probe (a child process) ------------------------------------------------------------
def memory_probe(mb: float) -> None:
    """Stream `mb` MB of documents through the MinHash/LSH stage as a Beam worker runs it
    (batches -> signatures -> band keys), keeping nothing; print peak RSS in MB."""
    import numpy as np

    from jamdata.text.dedup import LSHParams, band_keys
    from jamdata.text.minhash import MinHasher

    unique = c4_pages()
    size = mb_of(unique)
    baseline = peak_rss_mb()
    p = LSHParams()
    mh = MinHasher(p.num_perm, p.ngram, p.seed)
    done, n_keys, batch = 0.0, 0, []
    while done < mb:
        for t in unique:
            batch.append(t)
            if len(batch) == 256:
                sigs, _ = mh.signatures(batch)
                n_keys += sum(len(band_keys(s, p.bands, p.rows, "c4")) for s in sigs)
                batch = []
        done += size
    print(
        json.dumps(
            {
                "mb": round(done, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "band_keys": n_keys,
                "baseline_rss_mb": round(baseline, 1),
            }
        )
    )
    del np


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would include the forking parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(mb: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", str(mb)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0, help="MB of input for this project's runs (default 16)")
    ap.add_argument(
        "--anchor-passes",
        type=int,
        default=1,
        help="copies of the real documents the (slow) anchors process (default 1)",
    )
    ap.add_argument("--memory-probe", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    if not (CORPUS / "README.md").exists():
        sys.exit(f"corpus not found at {CORPUS} (set JAM_CORPUS)")

    unique = c4_pages()
    umb = mb_of(unique)
    passes = max(1, round(args.mb / umb))
    big = unique * passes
    bmb = mb_of(big)
    anchor = unique * args.anchor_passes
    amb = mb_of(anchor)
    print(
        f"input: {len(unique)} real web documents ({umb:.2f} MB); this project runs on {passes} copies "
        f"({bmb:.1f} MB), the anchors on {args.anchor_passes} ({amb:.1f} MB). CPU time of one process."
    )
    print(f"  {'step':<46} {'docs/s':>10} {'MB/s':>10} {'MB':>8} {'cpu s':>8}")

    print("filters: C4 quality + Gopher quality + Gopher repetition")
    chain = jam_filter_chain()
    jam_filters(unique[:5], chain)  # warm-up
    ours_dec, t = cpu(jam_filters, big, chain)
    r_ours = row("jam", len(big), bmb, t)
    keep, _ = datatrove_filters(anchor)
    dt_dec, t = cpu(lambda xs: [keep(x) for x in xs], anchor)
    r_dt = row(f"datatrove {_version('datatrove')}", len(anchor), amb, t)
    same = sum(a == b for a, b in zip(ours_dec[: len(anchor)], dt_dec)) / len(anchor)
    print(
        f"  ratio jam/datatrove (MB/s per core): {r_ours['mb_s'] / r_dt['mb_s']:.1f}x; same keep/drop decision on "
        f"{100 * same:.2f}% of {len(anchor)} documents ({sum(dt_dec)} kept by datatrove, "
        f"{sum(ours_dec[: len(anchor)])} by jam)"
    )

    print("MinHash signatures: 128 hash functions over word 5-grams")
    jam_minhash(unique[:50]), datasketch_bulk(unique[:50])  # warm-up
    t = min(cpu(jam_minhash, unique)[1] for _ in range(3))
    r_mh1 = row("jam (one copy, cold word cache, best of 3)", len(unique), umb, t)
    _, t = cpu(jam_minhash, big, passes)
    r_mh = row(f"jam ({passes} copies, fresh hasher per copy)", len(big), bmb, t)
    t = min(cpu(datasketch_bulk, unique)[1] for _ in range(3))
    r_ds = row(f"datasketch {_version('datasketch')} MinHash.bulk (best of 3)", len(unique), umb, t)
    step = datatrove_minhash_step()

    def dt_sigs(xs):  # as its run(): documents with fewer words than the n-gram get no signature
        return [step.get_signature(sh) for x in xs if (sh := step.get_shingles(x)).size]

    _, t = cpu(dt_sigs, anchor)
    r_dtm = row(f"datatrove {_version('datatrove')} MinhashDedupSignature (sha1)", len(anchor), amb, t)
    print(
        f"  ratio jam/datasketch: {r_mh1['mb_s'] / r_ds['mb_s']:.1f}x (one copy), {r_mh['mb_s'] / r_ds['mb_s']:.1f}x "
        f"({passes} copies); jam/datatrove: {r_mh1['mb_s'] / r_dtm['mb_s']:.1f}x"
    )

    print("whole chain: normalise + min length, language id, C4, Gopher x2, quality score + MinHash")
    jam_full(unique[:5])
    _, t = cpu(jam_full, big)
    r_full = row("jam clean+filter+MinHash", len(big), bmb, t)
    dt_total = 1 / (1 / r_dt["mb_s"] + 1 / r_dtm["mb_s"])
    print(
        f"  datatrove filters+MinHash (no language id): {dt_total:.2f} MB/s per core; "
        f"ratio {r_full['mb_s'] / dt_total:.1f}x"
    )

    print("peak memory of the MinHash/LSH stage (batches of 256 -> signatures -> band keys)")
    small, large = probe(max(1.0, args.mb / 4)), probe(args.mb)
    for p in (small, large):
        print(
            f"  {p['mb']:>8.1f} MB input: peak RSS {p['peak_rss_mb']:.1f} MB (after loading the documents: "
            f"{p['baseline_rss_mb']:.1f} MB; {p['band_keys']} band keys emitted)"
        )
    print(
        f"  growth: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x for {large['mb'] / small['mb']:.1f}x the input"
    )


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


if __name__ == "__main__":
    main()

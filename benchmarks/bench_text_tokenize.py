"""Tokenize+pack throughput of the text-sample stage vs raw SentencePiece encode, on the same text
in one run; scaling over worker processes; shard write rate vs plain numpy.tofile.

    .venv/bin/python benchmarks/bench_text_tokenize.py [--corpus ../shared/corpus] [--mb 8] [--beam]

Text: real web documents (C4 / dolma) and Gutenberg books from the sample corpus, tokenized with
the real LLaMA-style 32k model there. Each figure is the best of --repeat runs (the machine may be
shared); CPU time per process is reported as tokens per CPU-second ("per core").
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jamdata.formats.megatron import IndexedDatasetWriter  # noqa: E402
from jamdata.text.tokenizer import TextTokenizer  # noqa: E402

BATCH = 256


def load_text(corpus: Path, mb: float) -> list[str]:
    """Web documents and 8 kB book chapters, interleaved, up to `mb` megabytes."""
    web = []
    with gzip.open(corpus / "c4" / "CC-MAIN-2019-30-docs.jsonl.gz", "rt") as f:
        web = [json.loads(line)["text"] for line in f]
    books = []
    for p in sorted((corpus / "books" / "shakespeare").glob("*_gut.txt")):
        t = p.read_text(encoding="utf-8")
        books += [t[i : i + 8000] for i in range(0, len(t), 8000)]
    out, size, i = [], 0, 0
    limit = int(mb * 1e6)
    while size < limit:
        for pool in (web, books):
            d = pool[i % len(pool)]
            out.append(d)
            size += len(d.encode("utf-8"))
        i += 1
    return out


def batches(texts):
    return [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]


def timed(fn, repeat):
    best_cpu = best_wall = float("inf")
    result = None
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return result, best_cpu, best_wall


def raw_encode(sp, bs):
    return sum(len(ids) for b in bs for ids in sp.encode(b, num_threads=1))


def raw_encode_numpy(sp, bs):
    return sum(a.size for b in bs for a in sp.encode(b, return_type="numpy", num_threads=1))


def ours_pack(tok, bs):
    return sum(int(tok.encode_documents(b)[1].sum()) for b in bs)


def ours_pack_write(tok, bs, prefix):
    w = IndexedDatasetWriter(prefix, tok.vocab.dtype)
    for b in bs:
        w.add_documents(*tok.encode_documents(b))
    return w.finalize()[1]


_TOK = None


def _worker_init(model):
    global _TOK
    _TOK = TextTokenizer(model, 8192)


def _worker(bs):
    c0 = time.process_time()
    return ours_pack(_TOK, bs), time.process_time() - c0


def scaling(model, bs, workers, repeat):
    """Best wall time over `repeat`, and the tokens per CPU-second inside the workers (which shows
    whether a worker slows down when others run, independent of how many cores are free)."""
    chunks = [bs[i::workers] for i in range(workers)]
    best, cpu = float("inf"), float("inf")
    with mp.get_context("fork").Pool(workers, _worker_init, (model,)) as pool:
        pool.map(_worker, [chunks[0][:1]] * workers)  # warm up (model load)
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = pool.map(_worker, chunks)
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, sum(c for _, c in out))
    n = sum(k for k, _ in out)
    return n, best, cpu


def write_rate(tok, bs, tmp, repeat):
    docs = []
    for b in bs:
        flat, lengths = tok.encode_documents(b)
        docs += np.split(flat, np.cumsum(lengths)[:-1])
    docs = docs * max(1, int(64e6 // sum(d.nbytes for d in docs)))  # ~64 MB so fsync does not dominate
    flat = np.concatenate(docs)

    lengths = [d.size for d in docs]

    def ours():  # what the stage does: one batch of documents per write
        w = IndexedDatasetWriter(f"{tmp}/w", flat.dtype)
        for i in range(0, len(docs), BATCH):
            w.add_documents(np.concatenate(docs[i : i + BATCH]), lengths[i : i + BATCH])
        return w.finalize()

    def per_doc():
        w = IndexedDatasetWriter(f"{tmp}/w", flat.dtype)
        for d in docs:
            w.add_document(d)
        return w.finalize()

    def plain():
        with open(f"{tmp}/plain.bin", "wb") as f:
            flat.tofile(f)
            f.flush()
            os.fsync(f.fileno())

    _, _, t_ours = timed(ours, repeat)
    _, _, t_doc = timed(per_doc, repeat)
    _, _, t_plain = timed(plain, repeat)
    return flat.nbytes, len(docs), t_ours, t_doc, t_plain


def beam_stage(corpus_texts, model, workers, tmp):
    """The whole Beam stage (read clean parquet, tokenize, sample, write shards, manifest)."""
    import pyarrow.parquet as pq

    from jamdata.config import Config
    from jamdata.manifest import build_manifest, describe_shard, write_manifest
    from pipelines.stages import StageContext
    from pipelines.text_sample import run_stage
    from schemas import DOCUMENT
    from schemas.records import to_table

    clean = Path(tmp) / "clean"
    if not (clean / "manifest.json").exists():
        (clean / "c4").mkdir(parents=True)
        shards = []
        per = (len(corpus_texts) + 3) // 4
        for k in range(4):
            rows = [{"id": f"d{i}", "source": "c4", "text": t} for i, t in enumerate(corpus_texts) if i // per == k]
            pq.write_table(to_table(rows, DOCUMENT), clean / "c4" / f"part-{k:05d}.parquet", row_group_size=200)
            shards.append(describe_shard(str(clean), f"c4/part-{k:05d}.parquet", len(rows), group="c4"))
        write_manifest(str(clean), build_manifest("documents", shards, {}))
    cfg = Config(
        {
            "run": {"seed": 1},
            "text": {
                "sample": {
                    "budget_tokens": 1000,
                    "shares": {"c4": 1},
                    "epochs": {"c4": 1},
                    "input": str(clean),
                    "tokenizer": model,
                }
            },
        }
    )
    t0 = time.perf_counter()
    run_stage(StageContext(cfg, Path(tmp) / f"run{workers}", workers=workers))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"))
    ap.add_argument("--mb", type=float, default=6.0, help="megabytes of text")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--beam", action="store_true", help="also time the whole Beam stage with 1 and 2 workers")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    model = str(corpus / "tokenizers" / "mistral-7b-v0.1-tokenizer.model")
    texts = load_text(corpus, args.mb)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    bs = batches(texts)
    sp = spm.SentencePieceProcessor(model_file=model)
    tok = TextTokenizer(model, 8192)
    print(
        f"text: {len(texts)} documents, {nbytes / 1e6:.1f} MB (C4 web pages + Gutenberg chapters); "
        f"model {Path(model).name}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )

    # interleave the measurements so load changes hit all of them alike
    res = {"raw": [], "raw_np": [], "ours": [], "ours_write": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, fn in (
                ("raw", lambda: raw_encode(sp, bs)),
                ("raw_np", lambda: raw_encode_numpy(sp, bs)),
                ("ours", lambda: ours_pack(tok, bs)),
                ("ours_write", lambda: ours_pack_write(tok, bs, f"{tmp}/s")),
            ):
                n, cpu, _ = timed(fn, 1)
                res[name].append((n, cpu))
        best = {k: (v[0][0], min(c for _, c in v)) for k, v in res.items()}
        raw_n, raw_cpu = best["raw"]
        rate = {k: n / c for k, (n, c) in best.items()}
        print("\n== tokenize + pack, one process (tokens per CPU-second)")
        print(f"raw SentencePieceProcessor.encode (list of ints)   {rate['raw'] / 1e6:6.3f} M tok/s   (anchor)")
        print(
            f"raw encode, return_type='numpy'                    {rate['raw_np'] / 1e6:6.3f} M tok/s   "
            f"{rate['raw_np'] / rate['raw']:.2f}x"
        )
        print(
            f"jam encode_documents (tokenize + </s> + pack)      {rate['ours'] / 1e6:6.3f} M tok/s   "
            f"{rate['ours'] / rate['raw']:.2f}x of raw encode"
        )
        print(
            f"jam tokenize + pack + write .bin/.idx              {rate['ours_write'] / 1e6:6.3f} M tok/s   "
            f"{rate['ours_write'] / rate['raw']:.2f}x of raw encode"
        )
        assert best["ours"][0] == raw_n + len(texts), "token counts differ from raw encode"

        print("\n== scaling over worker processes (wall clock, tokenize + pack)")
        base = None
        for w in (1, 2):
            n, wall, cpu = scaling(model, bs, w, args.repeat)
            base = base or n / wall
            print(
                f"{w} worker(s): {n / wall / 1e6:6.3f} M tok/s wall, speed-up {n / wall / base:.2f}x; "
                f"{n / cpu / 1e6:6.3f} M tok/s per CPU-second in the workers"
            )
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            print(
                f"(load {os.getloadavg()[0]:.1f} > {os.cpu_count()} CPUs: wall-clock scaling is limited by free cores here)"
            )

        size, ndocs, t_ours, t_doc, t_plain = write_rate(tok, bs, tmp, args.repeat)
        print(f"\n== shard write ({ndocs} documents, {size / 1e6:.1f} MB of uint16 tokens, fsync'd)")
        print(f"numpy.tofile (one flat array)                      {size / t_plain / 1e6:8.1f} MB/s  (anchor)")
        print(
            f"IndexedDatasetWriter.add_documents (batches)      {size / t_ours / 1e6:8.1f} MB/s  "
            f"{t_plain / t_ours:.2f}x of numpy.tofile"
        )
        print(
            f"IndexedDatasetWriter.add_document (one by one)     {size / t_doc / 1e6:8.1f} MB/s  "
            f"{t_plain / t_doc:.2f}x of numpy.tofile"
        )

        if args.beam:
            print("\n== whole Beam stage (read parquet, tokenize everything, sample, write, manifest)")
            for w in (1, 2):
                t = beam_stage(texts, model, w, tmp)
                print(f"{w} worker(s): {t:.1f} s  ({(raw_n + len(texts)) / t / 1e6:.3f} M tok/s incl. start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

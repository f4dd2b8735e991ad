"""What the local runner itself holds per worker: peak RSS of Beam's FnApiRunner worker processes
(two, multi-processing, as `--workers 2` runs them) for trivial pipelines over growing input.

Two pipelines over the same C4-format files (real web pages of the sample corpus, repeated under
new ids), neither holding more than one document anywhere in its own code:

- `map`: files -> Reshuffle -> read JSON lines into dicts -> text length -> global sum;
- `gbk`: the same, then every document keyed by its id -> GroupByKey (one document per key) ->
  count -> global sum: the shape of every keyed step of text-clean (dedup joins, shard writes).

If `gbk` grows with the input while `map` stays flat, the growth is the runner's: its
GroupingBuffer (apache_beam/runners/portability/fn_api_runner/execution.py, `partition`) encodes
each worker's share of a GroupByKey's output as one bytes object, sent to the worker whole as its
one bundle, so a worker holds 1/workers of the largest grouped PCollection at once.

    python benchmarks/bench_scale_runner.py                 # 25, 100, 400 MB: about 3 minutes
    python benchmarks/bench_scale_runner.py --sizes 25,100

Results: benchmarks/results/bench_scale-runner.json and .md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import psutil
from apache_beam.options.pipeline_options import PipelineOptions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import RssSampler  # noqa: E402
from corpus import c4_pages  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def build(out: Path, mb: float, file_mb: float = 16.0) -> list[str]:
    base = c4_pages()
    out.mkdir(parents=True, exist_ok=True)
    files, buf, size, total, i = [], [], 0, 0, 0

    def flush():
        nonlocal buf, size
        path = out / f"part-{len(files):05d}.json.gz"
        path.write_bytes(gzip.compress("".join(buf).encode(), 1))
        files.append(str(path))
        buf, size = [], 0

    while total < mb * 1e6:
        text = base[i % len(base)]
        buf.append(json.dumps({"id": f"d{i:09d}", "text": text}) + "\n")
        size, total, i = size + len(text), total + len(text), i + 1
        if size >= file_mb * 1e6:
            flush()
    if buf:
        flush()
    return files


def read(path: str):
    with gzip.open(path, "rt") as f:
        for line in f:
            yield json.loads(line)


def run(files: list[str], shape: str, workers: int) -> dict:
    opts = PipelineOptions([f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    t0 = time.monotonic()
    with RssSampler() as rss:
        with beam.Pipeline(options=opts) as p:
            docs = p | "Files" >> beam.Create(files) | "Spread" >> beam.Reshuffle() | "Read" >> beam.FlatMap(read)
            if shape == "gbk":
                sizes = (
                    docs
                    | "ById" >> beam.Map(lambda d: (d["id"], d))
                    | "Group" >> beam.GroupByKey()
                    | "Count" >> beam.Map(lambda kv: sum(len(d["text"]) for d in kv[1]))
                )
            else:
                sizes = docs | "Length" >> beam.Map(lambda d: len(d["text"]))
            sizes | "Sum" >> beam.CombineGlobally(sum)
    return {"wall_s": round(time.monotonic() - t0, 1), **rss.summary()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="25,100,400", help="MB of text")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-runner-", dir=args.tmp))
    rows = []
    try:
        for mb in [float(s) for s in args.sizes.split(",")]:
            files = build(tmp / f"{mb:g}", mb)
            for shape in ("map", "gbk"):
                row = {"mb": mb, "shape": shape, **run(files, shape, args.workers)}
                rows.append(row)
                print(f"{mb:g} MB {shape}: worker peak RSS {row['worker_mb']} MB ({row['wall_s']} s)", flush=True)
            shutil.rmtree(tmp / f"{mb:g}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "beam": beam.__version__,
        "workers": args.workers,
        "runs": rows,
    }
    md = [
        "# bench_scale-runner",
        "",
        f"{result['machine']}; apache-beam {result['beam']}; FnApiRunner, "
        f"{args.workers} worker processes (multi_processing). Peak RSS of each worker process, MB.",
        "",
        "| MB of text | map (no GroupByKey) | gbk (one document per key) |",
        "|---|---|---|",
    ]
    for mb in sorted({r["mb"] for r in rows}):
        got = {r["shape"]: r["worker_mb"] for r in rows if r["mb"] == mb}
        md.append(f"| {mb:g} | {got.get('map')} | {got.get('gbk')} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_scale-runner.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "bench_scale-runner.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

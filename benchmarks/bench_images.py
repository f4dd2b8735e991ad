"""The whole Beam images stage against the bare VQ-VAE encoder forward, per core, on the same
images, at the shipped model sizes (random weights: the arithmetic is the same as trained ones).

For each model:
  bare forward  `model.encode` on the preprocessed images, in batches of `batch_size` (the limit)
  stage         `tokenize_images` (read tar -> decode + preprocess -> RunInference -> captions
                -> shuffle -> tars + manifest), local runner, one worker, on a tar of the same
                images: once with one batch of images and once with `--batches` batches
  overhead      whole job: stage CPU / bare CPU - 1 (includes once-per-job costs: pipeline start,
                checkpoint hash and load, tokenizer load), and per image at steady state: the
                stage's extra CPU for the extra batches over the bare forward of those images

Times are CPU seconds of this process with torch on one thread (the local runner with one worker
runs in this process), so "per core" is not distorted by other load on the machine; wall-clock
figures are printed too. Goal: steady-state overhead <= 15%.

    python benchmarks/bench_images.py                              # 256px-f8 and chameleon-512px-f16
    python benchmarks/bench_images.py --models 256px-f8 --batches 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jamdata.image.preprocess import preprocess_image  # noqa: E402
from jamdata.image.sources import read_source  # noqa: E402
from jamdata.image.vqvae import build_vqvae, save_checkpoint  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
DEFAULT_BATCH = {"256px-f8": 4, "chameleon-512px-f16": 2, "tiny-64px-f4": 16}


def cpu_wall(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def write_tar(path: Path, records) -> str:
    with tarfile.open(path, "w") as tar:
        for r in records:
            for ext, data in (("jpg", r.image), ("txt", (r.caption or "a picture").encode())):
                ti = tarfile.TarInfo(f"{r.key}.{ext}")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return str(path)


def bench_model(name: str, records, bs: int, batches: int, tok: str, tmp: Path) -> dict:
    from pipelines.image_tokenize import ImageSettings, tokenize_images

    torch.manual_seed(0)
    model = build_vqvae(name).eval()
    res = model.resolution
    n = bs * batches
    recs = records[:n]
    if len(recs) < n:
        raise SystemExit(f"{name}: need {n} images, the input has {len(recs)}")
    save_checkpoint(model, tmp / name)
    pre = [preprocess_image(r.image, res, 1, 100.0)[0] for r in recs]
    decode_cpu, _, _ = cpu_wall(lambda: [preprocess_image(r.image, res, 1, 100.0) for r in recs])
    model.encode(torch.from_numpy(pre[0][None]))  # first-call set-up, not part of the forward

    def bare():
        for i in range(0, n, bs):
            model.encode(torch.from_numpy(np.stack(pre[i : i + bs])))

    bare_cpu, bare_wall, _ = cpu_wall(bare)
    s = ImageSettings(resolution=res, min_size=1, max_aspect=100.0, batch_size=bs, num_shards=1)
    jobs = {}
    for k in (1, batches):
        src = write_tar(tmp / f"{name}-{k}.tar", recs[: k * bs])
        cpu, wall, out = cpu_wall(
            lambda: tokenize_images(
                [src], str(tmp / f"{name}-{k}-ic"), str(tmp / f"{name}-{k}-rej"), str(tmp / name), tok, s
            )
        )
        assert out["samples"] == k * bs, out
        jobs[k] = (cpu, wall)
    per_image_bare = bare_cpu / n
    per_image_stage = (jobs[batches][0] - jobs[1][0]) / ((batches - 1) * bs)
    return {
        "model": name,
        "res": res,
        "images": n,
        "bs": bs,
        "bare": n / bare_cpu,
        "bare_wall": n / bare_wall,
        "stage": n / jobs[batches][0],
        "stage_wall": n / jobs[batches][1],
        "job_overhead": jobs[batches][0] / bare_cpu - 1,
        "steady": 1 / per_image_stage,
        "steady_overhead": per_image_stage / per_image_bare - 1,
        "decode_share": decode_cpu / bare_cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["256px-f8", "chameleon-512px-f16"])
    ap.add_argument("--input", default=str(CORPUS / "images" / "cc12m-train-0000.tar"))
    ap.add_argument("--batch-size", type=int, help="images per forward (default: 4 at 256px, 2 at 512px)")
    ap.add_argument("--batches", type=int, default=2, help="batches in the larger job (>= 2)")
    args = ap.parse_args()
    if args.batches < 2:
        ap.error("--batches must be at least 2 (the steady state is the difference of two jobs)")
    tok = CORPUS / "tokenizers" / "mistral-7b-v0.1-tokenizer.model"
    if not tok.exists():
        print(f"needs the corpus tokenizer {tok}")
        return 1
    if not Path(args.input).exists():
        args.input = str(REPO / "sample_data" / "images" / "shapes-00000.tar")
    torch.set_num_threads(1)
    records = [r for r in read_source(args.input) if r.image]
    print(f"images from {Path(args.input).name}, torch {torch.__version__}, 1 thread, local runner, 1 worker")
    print(
        f"{'model':>20} {'px':>4} {'imgs':>4} {'batch':>5} | {'bare img/s':>10} {'stage img/s':>11} "
        f"{'job ovh':>8} | {'steady img/s':>12} {'steady ovh':>10} | {'decode/bare':>11}"
    )
    with tempfile.TemporaryDirectory() as d:
        bench_model("tiny-64px-f4", records, 1, 2, str(tok), Path(d))  # warm-up: imports, first job set-up
        for name in args.models:
            r = bench_model(
                name, records, args.batch_size or DEFAULT_BATCH.get(name, 4), args.batches, str(tok), Path(d)
            )
            print(
                f"{r['model']:>20} {r['res']:4d} {r['images']:4d} {r['bs']:5d} | {r['bare']:10.3f} {r['stage']:11.3f} "
                f"{r['job_overhead']:8.1%} | {r['steady']:12.3f} {r['steady_overhead']:10.1%} | {r['decode_share']:11.1%}"
                f"   (wall img/s: bare {r['bare_wall']:.3f}, stage {r['stage_wall']:.3f})",
                flush=True,
            )
    print(
        "img/s are per core (CPU seconds); job ovh: whole job incl. once-per-job costs; "
        "steady ovh: per extra image (goal <= 15%)"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

"""Image tokenization throughput per core: decode + preprocess + VQ-VAE encode (what each pipeline
worker does per image) against the bare model forward pass on the same pre-decoded batch (the
limit), at batch sizes 1, 8, 32, with inference_mode vs no_grad and channels-last vs NCHW.
Also the whole Beam job (`tokenize_images`, one worker) on the same shard.

Times are CPU seconds of this process with torch limited to one thread, so "images/s per core"
is not distorted by other load on the machine (wall-clock figures are printed too).

    python benchmarks/bench_images.py                       # tiny-64px-f4, CC12M shard (32 photos)
    python benchmarks/bench_images.py --model 256px-f8 --images 8 --batch-sizes 8 --repeat 1 \
        --grad-modes inference_mode --no-beam
"""
from __future__ import annotations

import argparse
import contextlib
import sys
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


def timed(fn, repeat: int) -> tuple[float, float]:
    """(min CPU seconds, min wall seconds) over `repeat` runs after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-64px-f4")
    ap.add_argument("--input", default=str(CORPUS / "images" / "cc12m-train-0000.tar"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--grad-modes", nargs="+", default=["inference_mode", "no_grad"])
    ap.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"])
    ap.add_argument("--no-beam", action="store_true", help="skip the whole-job measurement")
    args = ap.parse_args()
    if not Path(args.input).exists():
        args.input = str(REPO / "sample_data" / "images" / "shapes-00000.tar")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_vqvae(args.model).eval()
    res = model.resolution
    raw = [r.image for r in read_source(args.input) if r.image][: args.images]
    n = len(raw)
    pre = np.stack([preprocess_image(b, res, 1, 1e9)[0] for b in raw])
    print(f"model {args.model} ({res}px -> {model.grid()} codes), {n} images from {Path(args.input).name}, "
          f"torch {torch.__version__}, 1 thread")

    def decode_only():
        for b in raw:
            preprocess_image(b, res, 1, 1e9)

    c, w = timed(decode_only, args.repeat)
    print(f"decode+preprocess only: {n / c:8.1f} images/s per core (wall {n / w:.1f})")
    print(f"{'batch':>5} {'grad mode':>14} {'layout':>13} | {'forward img/s':>13} {'pipeline img/s':>14} {'overhead':>8}")
    results = []
    for bs in args.batch_sizes:
        for mode in args.grad_modes:
            for layout in args.layouts:
                m = model.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
                ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad

                def prep(x: np.ndarray) -> torch.Tensor:
                    t = torch.from_numpy(x)
                    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t

                def encode(t: torch.Tensor) -> torch.Tensor:
                    with ctx():
                        z = m.latent(t)
                        return m.quantize.indices(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))

                batches = [pre[i:i + bs] for i in range(0, n, bs)]
                tensors = [prep(b) for b in batches]

                def bare():
                    for t in tensors:
                        encode(t)

                def pipeline():
                    for i in range(0, n, bs):
                        arrs = [preprocess_image(b, res, 1, 1e9)[0] for b in raw[i:i + bs]]
                        encode(prep(np.stack(arrs))).numpy()

                cb, wb = timed(bare, args.repeat)
                cp, wp = timed(pipeline, args.repeat)
                overhead = cp / cb - 1
                results.append((bs, mode, layout, n / cb, n / cp, overhead))
                print(f"{bs:5d} {mode:>14} {layout:>13} | {n / cb:13.2f} {n / cp:14.2f} {overhead:8.1%}"
                      f"   (wall {n / wb:.2f} / {n / wp:.2f})")
    best = max(results, key=lambda r: r[4])
    print(f"best pipeline setting: batch {best[0]}, {best[1]}, {best[2]}: {best[4]:.1f} images/s per core, "
          f"{best[3]:.1f} bare forward; pipeline overhead {best[5]:.1%} (target < 15%)")
    if not args.no_beam:
        from pipelines.image_tokenize import ImageSettings, tokenize_images

        tok = CORPUS / "tokenizers" / "mistral-7b-v0.1-tokenizer.model"
        if not tok.exists():
            print("whole job: skipped (no tokenizer model in ../shared/corpus)")
            return 0
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(model.to(memory_format=torch.contiguous_format), d + "/vq")
            s = ImageSettings(resolution=res, min_size=1, max_aspect=100.0, batch_size=best[0], encode_groups=1)
            c0, w0 = time.process_time(), time.perf_counter()
            out = tokenize_images([args.input], d + "/ic", d + "/rej", d + "/vq", str(tok), s)
            w = time.perf_counter() - w0
            print(f"whole Beam job (1 worker, read + decode + encode + tokenize + write tars + manifest): "
                  f"{out['samples']} samples in {w:.1f}s wall = {out['samples'] / w:.1f} images/s "
                  f"(this process used {time.process_time() - c0:.1f} CPU s)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

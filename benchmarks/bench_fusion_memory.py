"""Peak host memory of building JAM-Cross from two parent files: whole parents loaded and fused
(the eager path: `load_backbone` twice, then `fuse_cross`) against `build_model`, which builds on
the meta device and reads the parents tensor by tensor. Each side runs in its own process; the
figure is the peak resident memory above the process's resident size just before building.

    python benchmarks/bench_fusion_memory.py [--layers 4] [--width 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIDE = r"""
import json, sys, torch
from jamtrain.models import build_model, fuse_cross, load_backbone
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
t, i, vocab, rows, side = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import threading, time
base, anon0, peak_anon, done = status("VmRSS"), status("RssAnon"), [0], []
def sample():  # anonymous memory only: memory-mapped parent files are page cache, not the process's own
    while not done:
        peak_anon[0] = max(peak_anon[0], status("RssAnon") - anon0)
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
open("/proc/self/clear_refs", "w").write("5")
torch.manual_seed(0)
if side == "eager":
    model = fuse_cross(load_backbone(t), load_backbone(i), rows)
else:
    model = build_model({"fusion": "cross", "text_checkpoint": t, "image_checkpoint": i, "text_rows": rows}, vocab)
n = sum(p.numel() for p in model.parameters())
done.append(1)
time.sleep(0.01)
print(json.dumps({"peak": status("VmHWM") - base, "anon": peak_anon[0], "params": n}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=40214)
    args = ap.parse_args()
    import torch

    from jamtrain.models import Backbone, backbone_config, save_model
    from jamdata.config import Config

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for seed, name in ((1, "text"), (2, "image")):
            torch.manual_seed(seed)
            cfg = backbone_config(
                Config({"n_layers": args.layers, "d_model": args.width, "n_heads": 16, "max_seq_len": 2048}, "model"),
                args.vocab,
            )
            paths.append(str(save_model(Backbone(cfg), Path(tmp) / f"{name}.safetensors")))
        rows = args.vocab - 8192
        out = {}
        for side in ("eager", "lazy"):
            r = subprocess.run(
                [sys.executable, "-c", SIDE, *paths, str(args.vocab), str(rows), side],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            out[side] = json.loads(r.stdout.strip().splitlines()[-1])
    gib = 2**30
    n = out["lazy"]["params"]
    print(
        f"JAM-Cross of two {args.layers}x{args.width} parents, vocabulary {args.vocab}: {n:,} parameters "
        f"({4 * n / gib:.2f} GiB in fp32)"
    )
    for side in ("eager", "lazy"):
        print(
            f"  {side:<6} peak resident {out[side]['peak'] / gib:.2f} GiB (with mapped file pages), "
            f"peak anonymous {out[side]['anon'] / gib:.2f} GiB (sampled every 2 ms)"
        )
    print(f"  ratio eager / lazy, anonymous: {out['eager']['anon'] / out['lazy']['anon']:.2f}")


if __name__ == "__main__":
    main()

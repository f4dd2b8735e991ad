"""Loader on real pipeline outputs: a finished run directory (text-tokens, image-caption and, when
present, instruct). Uses $JAM_LOADER_RUN, else out/demo (what `make demo` writes), else runs the
data stages of the demo on the bundled sample into a temporary directory (about 20 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jamdata.config import Config
from jamdata.formats.wds import iter_samples
from jamdata.loader import build_loader
from jamdata.manifest import is_complete, read_manifest
from jamdata.vocab import JointVocab

REPO = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("JAM_LOADER_RUN", REPO / "out" / "demo"))


def finished(run: Path) -> list[str]:
    return [n for n in ("text-tokens", "image-caption", "instruct") if is_complete(str(run / n))]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    run = RUN
    if "text-tokens" not in finished(run) or "image-caption" not in finished(run):
        run = tmp_path_factory.mktemp("run")
        cmd = [
            sys.executable,
            "-m",
            "jamdata.cli",
            "run",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--out",
            str(run),
            "--set",
            "vqvae.train.steps=10",
            "--set",
            "vqvae.train.checkpoint_every=0",
        ]
        for stage in ("text-clean", "tokenizer", "text-sample", "vqvae-train", "images", "instruct"):
            cmd += ["--stage", stage]
        r = subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    names = finished(run)
    assert {"text-tokens", "image-caption", "instruct"} <= set(names) or run == RUN, names
    return {n: str(run / n) for n in names}


def cfg(dirs, **kw):
    weights = {"text-tokens": 0.45, "image-caption": 0.45, "instruct": 0.10}
    base = {
        "mixture": {n: weights[n] for n in dirs},
        "seq_len": 512,
        "global_batch_size": 4,
        "steps_per_epoch": 10,
        "shuffle_block": 16,
    }
    base.update(kw)
    return Config({"loader": base}).section("loader")


def test_real_outputs_pack_whole_images_and_carry_masks(run_dirs):
    vocab = JointVocab.from_dict(read_manifest(run_dirs["text-tokens"])["vocab"])
    samples = {}
    for name in ("image-caption", "instruct"):
        if name in run_dirs:
            for tar in sorted(Path(run_dirs[name]).glob("*.tar")):
                samples.update({s.key: s.decoded() for s in iter_samples(str(tar))})
    lo = build_loader(cfg(run_dirs), run_dirs)
    batches = list(lo)
    seen = set()
    for b in batches:
        for r in range(b["tokens"].shape[0]):
            name = lo.dataset_names[int(b["dataset_index"][r])]
            seen.add(name)
            toks, seg, mask = b["tokens"][r].numpy(), b["segment_ids"][r].numpy(), b["loss_mask"][r].numpy()
            assert ((toks >= 0) & (toks < vocab.size)).all()
            if name == "text-tokens":
                assert (seg >= 0).all()
                continue
            for s, key in enumerate(b["keys"][r]):
                piece, want = toks[seg == s], samples[key]["tokens.npy"]
                assert np.array_equal(piece, want[: len(piece)])
                assert (piece == vocab.boi_id).sum() == (piece == vocab.eoi_id).sum()  # no image cut
                if "loss_mask.npy" in samples[key]:
                    assert np.array_equal(mask[seg == s], samples[key]["loss_mask.npy"][: len(piece)].astype(bool))
    assert seen == set(run_dirs)


def test_real_outputs_resume_exactly_with_workers(run_dirs):
    ref = list(build_loader(cfg(run_dirs), run_dirs))
    lo = build_loader(cfg(run_dirs), run_dirs, num_workers=2)
    first = []
    for b in lo:
        first.append(b)
        if len(first) == 4:
            break
    lo2 = build_loader(cfg(run_dirs), run_dirs, num_workers=1)
    lo2.load_state_dict(lo.state_dict())
    got = first + list(lo2)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(got, ref)) and len(got) == len(ref)

"""Modules split by concern keep their old import paths, and the pieces behave as before."""

from __future__ import annotations

import subprocess
import sys

import torch

from jamdata.config import Config
from jamdata.loader import build_loader, build_spec
from jamdata.loader.testing import make_tars, make_text_tokens


def test_names_moved_out_of_io_and_stream_are_the_same_objects():
    import jamdata.confined
    import jamdata.io
    import jamdata.loader.spec
    import jamdata.loader.stream

    for name in (
        "DEFAULT_MAX_INPUT_BYTES",
        "InputPolicy",
        "InputRefused",
        "confined_path",
        "parent_dir",
        "read_confined",
    ):
        assert getattr(jamdata.io, name) is getattr(jamdata.confined, name), name
    for name in ("LoaderSpec", "check_topology", "default_steps_per_epoch", "rank_lanes"):
        assert getattr(jamdata.loader.stream, name) is getattr(jamdata.loader.spec, name), name


def test_loader_spec_imports_without_torch():
    code = "import sys, jamdata.loader.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_batch_asked_for_before_iterating_is_the_first_batch(tmp_path):
    dirs = {
        "text": str(make_text_tokens(tmp_path / "text", {"wiki": [30, 25]}, seed=1)),
        "img": str(make_tars(tmp_path / "img", "image_caption", [20, 15], seed=2)),
    }
    cfg = Config(
        {
            "loader": {
                "mixture": {"text": 0.6, "img": 0.4},
                "seq_len": 48,
                "global_batch_size": 4,
                "shuffle_block": 8,
                "steps_per_epoch": 4,
                "seed": 3,
            }
        }
    ).section("loader")
    from jamdata.loader.stream import PackedStream

    spec, sources = build_spec(cfg, dirs)
    direct = PackedStream(spec, sources, steps_per_epoch=4).batch(0)  # no __iter__ first
    first = next(iter(build_loader(cfg, dirs)))
    assert torch.equal(direct["tokens"], first["tokens"]) and direct["keys"] == first["keys"]

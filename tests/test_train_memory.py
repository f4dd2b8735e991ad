"""Memory at reference scale, on CPU: fusion from parent files read tensor by tensor equals the
eager fusion, cross blocks are checkpointed, the `--dry-run` estimate is within 15% of the peak
resident memory that real DeepSpeed steps reach, it sizes from imported parents, and throughput
counts real tokens against the detected device's peak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

from jamdata.config import Config
from jamtrain.models import build_model, fuse_cross, fuse_uniform, fuse_width, load_backbone
from jamtrain.models.hf import import_checkpoint
from jamtrain.models.resize import extend_vocab
from jamtrain.settings import parse_settings
from jamtrain.sizing import dry_run, flops_per_token
from jamtrain.throughput import device_peak_tflops, mfu, real_tokens, run_peak
from test_train_data import REPO, VOCAB, write_config, write_datasets
from test_train_run import ENV

V = 120


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_datasets(tmp_path_factory.mktemp("data"))


def _llama(root, name: str, seed: int, vocab: int, layers: int = 2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / f"hf-{name}")
    out = root / f"{name}.safetensors"
    import_checkpoint(str(root / f"hf-{name}"), out)
    return out


# ------------------------------------------------------------------------------------- building
def test_fusion_from_files_equals_the_eager_fusion_of_loaded_parents(tmp_path):
    t, i = _llama(tmp_path, "text", 1, 100), _llama(tmp_path, "image", 2, 100)
    keys = {"text_checkpoint": str(t), "image_checkpoint": str(i), "extend_vocab": True, "extend_vocab_seed": 5}
    eager_t, eager_i = extend_vocab(load_backbone(t), V, 5), extend_vocab(load_backbone(i), V, 6)
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    seg = torch.tensor([[0] * 7 + [1] * 5, [0] * 10 + [-1] * 2])
    cases = [
        ({"fusion": "cross", "text_rows": 100, "cross_every": 1}, lambda: fuse_cross(eager_t, eager_i, 100)),
        ({"fusion": "width"}, lambda: fuse_width(eager_t, eager_i)),
        ({"fusion": "uniform", "uniform_weight": 0.3}, lambda: fuse_uniform(eager_t, eager_i, 0.3)),
    ]
    for extra, eager in cases:
        torch.manual_seed(11)
        lazy = build_model({**keys, **extra}, V).eval()
        torch.manual_seed(11)
        ref = eager().eval()
        a, b = lazy.state_dict(), ref.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (extra["fusion"], k)
        with torch.no_grad():
            assert torch.equal(lazy(tokens, seg), ref(tokens, seg))
    # in the training dtype directly: the same as building in fp32 and casting
    torch.manual_seed(11)
    bf = build_model({**keys, **cases[0][0]}, V, dtype=torch.bfloat16)
    torch.manual_seed(11)
    want = build_model({**keys, **cases[0][0]}, V).to(torch.bfloat16)
    assert all(torch.equal(x, y) for x, y in zip(bf.state_dict().values(), want.state_dict().values()))


def test_cross_blocks_are_recomputed_with_checkpointing_and_gradients_are_identical():
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    grads, calls = [], []
    for ac in (False, True):
        torch.manual_seed(3)
        model = build_model(
            {
                "preset": "tiny",
                "d_model": 32,
                "n_heads": 4,
                "d_ff": 64,
                "fusion": "cross",
                "text_rows": 80,
                "activation_checkpointing": ac,
                "cross_kernel": "reference",
            },
            V,
        ).train()
        count = [0]
        for blk in model.cross:
            blk.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        model(tokens).logsumexp(-1).sum().backward()
        calls.append(count[0])
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls == [2, 4]  # 2 cross blocks; checkpointed, each runs again in the backward pass
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("cross.") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=0, rtol=0)


# ------------------------------------------------------------------------------ estimate vs peak
MEASURE = r"""
import json, sys
import torch, torch._dynamo  # noqa: F401  (import-time memory before the baseline)
from jamdata.config import Config
from jamtrain.distributed import setup_distributed
from jamtrain.settings import parse_settings
from jamtrain.train import train

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

setup_distributed()
s = parse_settings(Config.load(sys.argv[1]))
w = torch.nn.Linear(4, 4)
o = torch.optim.AdamW(w.parameters())
w(torch.ones(2, 4)).sum().backward()
o.step()  # the optimizer's and autograd's own start-up allocations belong to the baseline
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size
train(s, echo=lambda m: None)
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""

CASES = {
    # JAM-Cross, ZeRO-2, activation checkpointing: model states and ZeRO's copies dominate
    "cross-zero2-checkpointed": (
        2,
        {
            "n_layers": 2,
            "d_model": 384,
            "n_heads": 4,
            "max_seq_len": 128,
            "fusion": "cross",
            "activation_checkpointing": True,
        },
        4,
        128,
    ),
    # one backbone, no ZeRO, no checkpointing, long rows: activations dominate
    "backbone-zero0-activations": (0, {"n_layers": 2, "d_model": 256, "n_heads": 4, "max_seq_len": 256}, 8, 256),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_estimate_is_within_15_percent_of_the_measured_peak(case, data, tmp_path):
    stage, model, micro, seq = CASES[case]
    ds = json.loads((REPO / "configs" / "deepspeed-cpu.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1)
    ds["zero_optimization"]["stage"] = stage
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = write_config(
        tmp_path / "cfg.yaml",
        data,
        tmp_path / "out",
        ds_json=str(tmp_path / "ds.json"),
        model=model,
        steps=2,
        save_every=0,
        export=False,
        eval={"holdout_fraction": 0.0},
        loader={"seq_len": seq},
        cpu_threads=1,
    )
    # large tensors straight from mmap: the resident peak then follows the live tensors
    env = {**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}
    r = subprocess.run([sys.executable, "-c", MEASURE, str(cfg)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    measured = got["peak"] - got["base"]
    est = dry_run(parse_settings(Config.load(cfg)), echo=lambda m: None, cpu=True)
    total = est["memory_bytes"]["total"]
    assert est["world_size"] == 1
    assert abs(total - measured) <= 0.15 * measured, (case, total / 2**20, measured / 2**20, est["memory_bytes"])


def test_dry_run_sizes_the_model_from_imported_parents(data, tmp_path):
    vocab_rows = VOCAB.text_size
    t, i = _llama(tmp_path, "text", 1, vocab_rows, layers=3), _llama(tmp_path, "image", 2, vocab_rows, layers=3)
    model = {
        "preset": "tiny",
        "fusion": "cross",
        "text_checkpoint": str(t),
        "image_checkpoint": str(i),
        "extend_vocab": True,
        "n_image_codes": VOCAB.n_image_codes,
    }  # preset keys say 2 x 64: the parents win
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", model=model)
    s = parse_settings(Config.load(cfg))
    lines: list[str] = []
    out = dry_run(s, echo=lines.append, cpu=True)
    built = build_model({**model, "text_rows": VOCAB.image_offset}, VOCAB.size)
    assert out["params"] == sum(p.numel() for p in built.parameters())
    text = "\n".join(lines)
    assert f"architecture from parent {t}: 3 layers x 32, 4 heads (2 key/value), rmsnorm, swiglu" in text
    assert "memory per GPU:" in text and "memory per host" in text and "checkpointing" in text
    assert "building per rank on the device:" in text and "the whole model" in text  # ZeRO-2 here
    # FLOPs per token (MFU) follow the parents too: 3 layers x 32, not the preset's 2 x 64
    n = out["params"]
    arch = {
        "n_layers": 3,
        "d_model": 32,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 48,
        "max_seq_len": 64,
        "norm": "rmsnorm",
        "activation": "swiglu",
        "positions": "rotary",
        "fusion": "cross",
    }
    got = flops_per_token(n, model, VOCAB.size, 32)
    assert got == flops_per_token(n, arch, VOCAB.size, 32) == 6 * n + 12 * (2 * 3 + 2 * 3) * 32 * 32
    keys_only = {k: v for k, v in model.items() if not k.endswith("checkpoint")}
    assert flops_per_token(n, keys_only, VOCAB.size, 32) == 6 * n + 12 * (2 * 2 + 2 * 2) * 64 * 32
    # under ZeRO-3 a rank builds only its partition plus one gathered tensor
    s.deepspeed = {**s.deepspeed, "zero_optimization": {"stage": 3}}
    lines.clear()
    z3 = dry_run(s, echo=lines.append, cpu=True)
    largest = max(p.numel() for p in built.parameters())
    assert z3["build_device_bytes"] == 4 * (n / 1 + largest)  # one rank, fp32 on CPU
    assert out["build_device_bytes"] == 4 * n
    assert any("partitioned as it is built" in line for line in lines)
    # a parent that cannot be read is named, and the config keys size the model instead
    s.model = {**model, "text_checkpoint": str(tmp_path / "missing.safetensors"), "image_checkpoint": "x.pt"}
    lines.clear()
    dry_run(s, echo=lines.append, cpu=True)
    assert any("missing.safetensors not readable" in line for line in lines)


# ----------------------------------------------------------------------------------- throughput
def test_throughput_counts_real_tokens_and_takes_the_peak_from_the_device():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    batch = {"tokens": torch.zeros(2, 8, dtype=torch.long), "segment_ids": seg}
    assert real_tokens(batch) == 5 + 7  # inputs are tokens[:, :-1]: row 0 keeps 5, row 1 all 7
    assert real_tokens({"tokens": torch.zeros(2, 8)}) == 14
    assert device_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert device_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756
    assert device_peak_tflops("NVIDIA H200", "bf16") == 989
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert device_peak_tflops("Tesla T4", "fp16") is None
    peak, note = run_peak(None, cpu=True, precision="fp32")
    assert peak is None and "n/a" in note
    assert run_peak(150.0, cpu=True, precision="fp32")[0] == 150.0
    # 12 real tokens in 0.5 s at 1e12 FLOPs each on 2 devices of 48 TFLOP/s: 24e12 / 96e12
    assert mfu(12 / 0.5, 1e12, 48.0, 2) == pytest.approx(0.25)
    assert mfu(24.0, 1e12, None, 2) is None

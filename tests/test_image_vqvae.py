"""The VQ-VAE in the taming / Chameleon checkpoint layout."""

import pytest
import torch
import yaml

from jamdata.image.vqvae import CheckpointError, build_vqvae, load_vqvae, preset, save_checkpoint

# What taming-transformers' VQModel (and Chameleon's vqgan.py) name these parameters.
TAMING_KEYS = [
    "encoder.conv_in.weight",
    "encoder.down.0.block.0.norm1.weight",
    "encoder.down.0.block.1.conv2.bias",
    "encoder.down.0.downsample.conv.weight",
    "encoder.down.2.block.0.nin_shortcut.weight",
    "encoder.down.4.block.0.nin_shortcut.weight",
    "encoder.mid.block_1.conv1.weight",
    "encoder.mid.attn_1.q.weight",
    "encoder.mid.attn_1.proj_out.bias",
    "encoder.norm_out.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "quantize.embedding.weight",
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
    "decoder.mid.block_2.norm2.bias",
    "decoder.up.4.block.2.conv1.weight",
    "decoder.up.4.upsample.conv.weight",
    "decoder.up.1.block.0.nin_shortcut.weight",
    "decoder.conv_out.bias",
]


def taming_checkpoint_script(model: torch.nn.Module, ckpt_path, yaml_path) -> None:
    """What a taming training run leaves behind: Lightning-style dict with GAN-loss weights and
    a vqgan.yaml with model.target/params (written here by hand, not with save_checkpoint)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save({"epoch": 3, "global_step": 1000, "state_dict": sd}, ckpt_path)
    yaml_path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "target": "taming.models.vqgan.VQModel",
                    "params": {
                        "embed_dim": 256,
                        "n_embed": 8192,
                        "ddconfig": {
                            "double_z": False,
                            "z_channels": 256,
                            "resolution": 512,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": 128,
                            "ch_mult": [1, 1, 2, 2, 4],
                            "num_res_blocks": 2,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                        "lossconfig": {
                            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                            "params": {"disc_start": 0},
                        },
                    },
                }
            }
        )
    )


@pytest.fixture(scope="module")
def chameleon():
    torch.manual_seed(0)
    m = build_vqvae("chameleon-512px-f16").eval()
    with torch.no_grad():
        m.quantize.embedding.weight.normal_()  # spread the codebook so codes differ between patches
    return m


def test_chameleon_layout_keys(chameleon):
    keys = set(chameleon.state_dict())
    missing = [k for k in TAMING_KEYS if k not in keys]
    assert not missing
    assert chameleon.quantize.embedding.weight.shape == (8192, 256)
    assert not any(".attn." in k and "down" in k for k in keys)  # attn_resolutions: []
    assert chameleon.downsample_factor == 16 and chameleon.grid() == (32, 32)
    assert build_vqvae("256px-f8").grid() == (32, 32)


def test_taming_checkpoint_loads_and_gives_identical_codes(chameleon, tmp_path):
    taming_checkpoint_script(chameleon, tmp_path / "vqgan.ckpt", tmp_path / "vqgan.yaml")
    loaded = load_vqvae(tmp_path / "vqgan.ckpt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # tiny input (CPU): 2x2 codes each
    want, got = chameleon.encode(x), loaded.encode(x)
    assert got.shape == (2, 2, 2) and len(torch.unique(want)) > 1
    assert torch.equal(want, got)
    assert torch.equal(chameleon.decode(want[:1, :1, :1]), loaded.decode(got[:1, :1, :1]))
    # the shipped preset describes the same model as the yaml
    ddconfig = yaml.safe_load((tmp_path / "vqgan.yaml").read_text())["model"]["params"]["ddconfig"]
    assert preset("chameleon-512px-f16")["ddconfig"] == ddconfig


def test_key_mismatch_names_keys(chameleon, tmp_path):
    sd = chameleon.state_dict()
    sd = {k: v for k, v in sd.items() if k != "encoder.mid.attn_1.q.weight"}
    sd["encoder.mid.attn_2.q.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_vqvae(tmp_path / "bad.ckpt", config="chameleon-512px-f16")
    msg = str(e.value)
    assert "missing keys: encoder.mid.attn_1.q.weight" in msg
    assert "unexpected keys: encoder.mid.attn_2.q.weight" in msg and "bad.ckpt" in msg


def test_wrong_config_shape_mismatch(tmp_path):
    small = build_vqvae("tiny-64px-f4")
    save_checkpoint(small, tmp_path)
    with pytest.raises(CheckpointError, match="shape mismatch.*quantize.embedding.weight"):
        load_vqvae(tmp_path, config={"model": {"params": {**preset("tiny-64px-f4"), "n_embed": 512}}})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_vqvae(tmp_path / "vqvae.ckpt", config="256px-f8")


def test_round_trip_own_format(tmp_path):
    torch.manual_seed(1)
    m = build_vqvae("tiny-64px-f4", n_embed=64).eval()
    with torch.no_grad():
        m.quantize.embedding.weight.normal_()
    ckpt, cfg = save_checkpoint(m, tmp_path)
    assert set(torch.load(ckpt)["state_dict"]) == set(m.state_dict())  # EMA statistics not saved
    assert yaml.safe_load(open(cfg))["model"]["params"]["n_embed"] == 64
    loaded = load_vqvae(tmp_path)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    codes = loaded.encode(x)
    assert codes.shape == (3, 16, 16) and codes.dtype == torch.int64 and int(codes.max()) < 64
    assert torch.equal(codes, m.encode(x))
    out = loaded.decode(codes)
    assert out.shape == (3, 3, 64, 64) and out.abs().max() <= 1


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "vqvae.ckpt").write_bytes(b"not a checkpoint")
    save_dir = tmp_path
    (save_dir / "vqvae.yaml").write_text(yaml.safe_dump(build_vqvae("tiny-64px-f4").taming_config()))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_vqvae(save_dir)

"""The parts of VQ-VAE training: streaming data, the taming losses and the reconstruction metrics,
on the bundled shapes shard and on weight files written here in the published layouts."""

import numpy as np
import pytest
import torch

from jamdata.errors import UserError
from jamdata.image.losses import LPIPS, NLayerDiscriminator, WeightsError, adaptive_weight, disc_factor, hinge_d_loss
from jamdata.image.metrics import InceptionV3, RunningStats, frechet_distance, psnr, usage
from jamdata.image.train_data import ImageStream, NoTrainingImages, Position, held_out, holdout_images
from jamdata.image.train import Evaluator
from jamdata.image.vqvae import build_vqvae


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads spin and slow down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shard(sample_data):
    return [str(sample_data / "images" / "shapes-00000.tar")]


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def digest(arrs):
    return [float(a.sum()) for a in arrs]


# -- streaming data -----------------------------------------------------------------------------
def test_stream_shuffles_within_a_bound_and_covers_each_epoch(shard):
    s = ImageStream(shard, 32, seed=1, shuffle_buffer=8)
    first = take(s, 66)  # 66 records, every one usable at min_size 16
    assert s.position == Position(0, 66) and s.usable == 66 and s.rejects == []
    plain = digest(take(ImageStream(shard, 32, shuffle_buffer=1), 66))
    assert sorted(digest(first)) == sorted(plain) and digest(first) != plain
    # a bounded buffer: no image comes out more than `buffer` places before its turn
    order = [plain.index(v) for v in digest(first)]
    assert all(o <= i + 8 for i, o in enumerate(order))
    nxt = take(s, 1)
    assert s.position == Position(1, 1)  # second epoch, another order
    second = take(ImageStream(shard, 32, seed=1, shuffle_buffer=8), 132)[66:]
    assert digest(second) != digest(first) and digest(nxt) == digest(second[:1])


def test_stream_resumes_exactly_and_ranks_split_the_data(shard):
    s = ImageStream(shard, 32, seed=3, shuffle_buffer=16)
    straight = digest(take(s, 100))
    part = ImageStream(shard, 32, seed=3, shuffle_buffer=16)
    head = take(part, 40)
    again = ImageStream(shard, 32, seed=3, shuffle_buffer=16)
    again.position = Position.from_dict(part.position.to_dict())
    assert digest(head) + digest(take(again, 60)) == straight
    r0 = digest(take(ImageStream(shard, 32, seed=3, rank=0, world_size=2), 33))
    r1 = digest(take(ImageStream(shard, 32, seed=3, rank=1, world_size=2), 33))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(straight[:66])


def test_stream_holdout_and_limits(shard, tmp_path):
    keys = [f"{i:09d}" for i in range(66)]
    out = [k for k in keys if held_out(k, 4)]
    assert 5 <= len(out) <= 30
    train = ImageStream(shard, 32, holdout_every=4, shuffle_buffer=1)
    take(train, 66 - len(out))
    assert train.position.epoch == 0 and train.usable == 66 - len(out)
    take(train, 1)
    assert train.position.epoch == 1
    held = holdout_images(shard, 32, 100, 4)
    assert held.shape == (len(out), 3, 32, 32)
    assert not set(digest(held)) & set(digest(take(ImageStream(shard, 32, holdout_every=4), 60)))
    assert holdout_images(shard, 32, 5, 0).shape == (5, 3, 32, 32)
    few = ImageStream(shard, 32, max_images=10, shuffle_buffer=1)
    take(few, 11)
    assert few.position == Position(1, 1)
    big = ImageStream(shard, 32, min_size=1000)  # every image too small: a one-line user error
    with pytest.raises(NoTrainingImages, match="shapes-00000.tar.*no usable training images.*66 rejected"):
        take(big, 1)
    assert big.rejects[0]["reason"] == "too_small" and isinstance(NoTrainingImages("f", "x"), UserError)


# -- losses -------------------------------------------------------------------------------------
VGG16_CONVS = [
    (3, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    (256, 256),
    (256, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
]
VGG16_CONV_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's `features` numbering


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """VGG16 and LPIPS weight files in torchvision's and lpips' key layouts (random values),
    written from the published layouts, not from our modules."""
    d = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    vgg = {}
    for i, (cin, cout) in zip(VGG16_CONV_INDEX, VGG16_CONVS):
        vgg[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.zeros(cout)
    vgg["classifier.6.bias"] = torch.zeros(1000)  # the classifier is in the real file and is ignored
    lin = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate([64, 128, 256, 512, 512])
    }
    torch.save(vgg, d / "vgg16-397923af.pth")
    torch.save(lin, d / "vgg.pth")
    return d / "vgg16-397923af.pth", d / "vgg.pth", lin


def test_lpips_loads_published_layouts_and_measures_distance(lpips_files, tmp_path):
    vgg, lin, lin_state = lpips_files
    m = LPIPS.from_files(str(vgg), str(lin))
    assert sum(p.numel() for p in m.net.parameters()) == 14_714_688  # VGG16's convolutions
    assert not any(p.requires_grad for p in m.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    same, diff = m(x, x), m(x, y)
    assert same.shape == (2, 1, 1, 1) and float(same.abs().max()) < 1e-6 and float(diff.min()) > 0
    # the linear layers weight the distance: doubling them doubles it
    torch.save({k: 2 * v for k, v in lin_state.items()}, tmp_path / "vgg2.pth")
    assert torch.allclose(LPIPS.from_files(str(vgg), str(tmp_path / "vgg2.pth"))(x, y), 2 * diff, rtol=1e-4)
    # gradient reaches the reconstruction
    y.requires_grad_(True)
    m(x, y).sum().backward()
    assert float(y.grad.abs().sum()) > 0


def test_lpips_weight_files_missing_or_wrong_are_one_line_errors(lpips_files, tmp_path):
    vgg, lin, _ = lpips_files
    with pytest.raises(WeightsError, match=r"nowhere/vgg.pth.*not found \(config key vqvae.train.lpips_lin\)"):
        LPIPS.from_files(str(vgg), str(tmp_path / "nowhere" / "vgg.pth"))
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="not LPIPS.*missing keys lin1"):
        LPIPS.from_files(str(vgg), str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="not torchvision VGG16"):
        LPIPS.from_files(str(lin), str(lin))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: cannot read VGG16"):
        LPIPS.from_files(str(tmp_path / "junk.pth"), str(lin))


def test_patchgan_layout_and_hinge_loss():
    d = NLayerDiscriminator()
    assert sum(p.numel() for p in d.parameters()) == 2_765_633  # taming's default discriminator
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 patches on a 30x30 grid
    assert NLayerDiscriminator(ndf=8, n_layers=2)(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 14, 14)
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0  # confident and right
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1
    assert float(hinge_d_loss(torch.tensor([0.5]), torch.tensor([1.0]))) == pytest.approx(0.5 * (0.5 + 2.0))


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    last = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.6, 0.8])
    rec, g = (a * last).sum(), (b * last).sum()  # gradients a (norm 5) and b (norm 1)
    w = adaptive_weight(rec, g, last, disc_weight=0.8)
    assert float(w) == pytest.approx(0.8 * 5 / (1 + 1e-4)) and not w.requires_grad
    assert float(adaptive_weight((a * last).sum(), (0 * last).sum(), last)) == 1e4  # clamped
    assert disc_factor(99, 100) == 0 and disc_factor(100, 100) == 1 and disc_factor(5, 0, 0.5) == 0.5


# -- metrics ------------------------------------------------------------------------------------
def test_psnr_usage_and_frechet_distance():
    x = torch.zeros(2, 3, 8, 8)
    assert psnr(x, x + 0.1) == pytest.approx(10 * np.log10(4 / 0.01), rel=1e-5)
    u = usage(torch.tensor([5, 5, 0, 0]))
    assert u == {"codes_used": 2, "perplexity": pytest.approx(2.0)}
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(200, 6, generator=g), torch.randn(300, 6, generator=g) * 1.5 + 0.5
    a, b = RunningStats(6), RunningStats(6)
    for chunk in fa.split(64):
        a.add(chunk)
    b.add(fb)
    mu_a, cov_a = a.mean_cov()
    assert torch.allclose(cov_a, torch.from_numpy(np.cov(fa.double().numpy(), rowvar=False)), atol=1e-10)
    s1, s2 = np.cov(fa.double().numpy(), rowvar=False), np.cov(fb.double().numpy(), rowvar=False)
    tr_root = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    want = ((fa.double().mean(0) - fb.double().mean(0)) ** 2).sum().item() + np.trace(s1) + np.trace(s2) - 2 * tr_root
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-6


def test_rfid_with_a_torchvision_layout_inception_file(tmp_path, shard):
    net = InceptionV3()
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 27_161_264  # torchvision's inception_v3
    assert (
        state["AuxLogits.fc.weight"].shape == (1000, 768)
        and state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
        and "Mixed_6e.branch7x7dbl_5.bn.num_batches_tracked" in state
    )
    g = torch.Generator().manual_seed(0)

    def value(k, v):  # He-initialised convolutions, identity batch norms: features that carry the input
        if k.endswith("conv.weight") or k.endswith("fc.weight"):
            return torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
        return torch.ones_like(v) if k.endswith(("bn.weight", "running_var")) else torch.zeros_like(v)

    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save({k: value(k, v) for k, v in state.items()}, path)
    images = torch.from_numpy(holdout_images(shard, 32, 6, 0))
    net = InceptionV3.from_file(str(path), size=75)  # the smallest input it takes: a fast test
    feats = net(images)
    assert feats.shape == (6, 2048) and float(feats.std(0).mean()) > 1e-3
    model = build_vqvae("tiny-64px-f4", 16)
    ev = Evaluator(images, net)
    got = ev(model)
    assert got["rfid"] > 1e-3 and got["psnr"] < 20 and got["codes_used"] >= 1 and ev.real.n == 6
    same = RunningStats()
    same.add(feats)
    assert abs(frechet_distance(ev.real, same)) < 1e-4 * float(torch.trace(ev.real.mean_cov()[1]))
    with pytest.raises(WeightsError, match="missing.pth: Inception-v3 weights not found"):
        Evaluator(images, str(tmp_path / "missing.pth"))
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match="short.pth: not torchvision inception_v3 weights: missing keys Mixed_7c"):
        Evaluator(images, str(tmp_path / "short.pth"))

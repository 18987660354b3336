"""Detector networks: RepLK re-parameterisation, every ablation switch's shapes and gradients."""

import itertools

import numpy as np
import pytest
import torch

from detector_fixtures import make_detector_dataset
from trainables.data import load_category, resolve_data
from trainables.detector.config import make_config
from trainables.detector.losses import DetectorLoss, focal_loss, ssim
from trainables.detector.model import DefectPredictor, LargeKernelConv, LargeKernelUnit, ReconstructionNet
from trainables.detector.pipeline import batch_at
from trainables.detector.synthesis import AnomalySynthesizer, build_source_pool
from trainables.detector.train import _train_step, build_networks, synthesis_params


def randomise_batchnorm(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so fusion has something to fold."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("kernel, small", [(13, 5), (7, 3), (3, 5), (5, 5)])
def test_fused_large_kernel_conv_matches_unfused(kernel, small):
    torch.manual_seed(0)
    conv = LargeKernelConv(8, kernel, small)
    randomise_batchnorm(conv)
    conv.eval()
    x = torch.randn(2, 8, 12, 12)
    reference = conv(x)
    conv.reparameterize()
    assert conv.fused is not None and not hasattr(conv, "lk")
    assert (conv(x) - reference).abs().max() < 1e-4


@pytest.mark.parametrize("kernel, size", [(31, (16, 16)), (13, (8, 12)), (7, (3, 5))])
def test_fft_weight_gradient_equals_the_direct_one(kernel, size, monkeypatch):
    """The large kernel's FFT weight gradient against aten's direct conv backward, in float64: the
    same output and the same gradients, for kernels larger than the map and non-square maps."""
    from trainables.detector import model

    calls = []
    by_fft_only = model.depthwise_weight_grad_fft
    monkeypatch.setattr(model, "depthwise_weight_grad_fft", lambda *a: calls.append(a) or by_fft_only(*a))
    torch.manual_seed(0)
    fft = LargeKernelConv(4, kernel, 5, weight_grad="fft").double()
    direct = LargeKernelConv(4, kernel, 5, weight_grad="direct").double()
    direct.load_state_dict(fft.state_dict())
    x = torch.randn(3, 4, *size, dtype=torch.float64, requires_grad=True)
    y_fft, y_direct = fft(x), direct(x)
    grad = torch.randn_like(y_fft)
    by_fft = torch.autograd.grad(y_fft, [x, fft.lk.weight, fft.small.weight], grad)
    by_direct = torch.autograd.grad(y_direct, [x, direct.lk.weight, direct.small.weight], grad)
    assert torch.equal(y_fft, y_direct) and len(calls) == 1   # one FFT gradient: the k×k kernel's
    for a, b in zip(by_fft, by_direct):
        assert (a - b).abs().max() < 1e-10 * b.abs().max()
    assert by_direct[1].abs().max() > 0


def test_reparameterised_predictor_matches_unfused_in_eval_mode():
    torch.manual_seed(0)
    D = DefectPredictor(base=4, lk_kernels=(15, 7, 3, 1), lk_small_kernel=5)
    randomise_batchnorm(D)
    D.eval()
    x = torch.rand(2, 6, 32, 32)
    reference = D(x)
    D.reparameterize()
    fused = [m for m in D.modules() if isinstance(m, LargeKernelConv)]
    assert len(fused) == 4 and all(m.fused is not None for m in fused)
    assert (D(x) - reference).abs().max() < 1e-4


def test_module_tree_names_the_paper_blocks():
    D = DefectPredictor(base=4, lk_kernels=(31, 29, 27, 13))
    names = dict(D.named_children())
    assert [n for n in names if n.endswith("_lk")] == ["e3_lk", "e4_lk", "e5_lk", "e6_lk"]
    assert isinstance(names["e3_lk"], LargeKernelUnit) and names["e3_lk"].replk.large_kernel.kernel == 31
    assert not any(n.endswith("_lk") for n, _ in DefectPredictor(base=4, lk_kernels=None).named_children())
    R = ReconstructionNet(base=4)
    assert [f.shape[1] for f in R.encoder(torch.rand(1, 3, 32, 32))] == [4, 8, 16, 32, 32]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_baselines_have_draem_parameter_counts():
    """At paper widths R and D (lk off) are DRAEM's model_unet.py networks, parameter for parameter."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        assert count(ReconstructionNet(base=128)) == 69_048_579
        assert count(DefectPredictor(base=64, lk_kernels=None)) == 28_374_146


def test_large_kernel_predictor_is_draem_d_plus_the_units():
    with torch.device("meta"):
        plain = DefectPredictor(base=64, lk_kernels=None)
        large = DefectPredictor(base=64, lk_kernels=(31, 29, 27, 13))
    units = [m for n, m in large.named_children() if n.endswith("_lk")]
    assert len(units) == 4
    assert count(large) - count(plain) == sum(count(u) for u in units) > 0
    outside_units = {n: p.shape for n, p in large.named_parameters() if "_lk." not in n}
    assert outside_units == {n: p.shape for n, p in plain.named_parameters()}


def test_separable_ssim_equals_draems_two_dimensional_window():
    """SSIM blurs with two 1-D passes; DRAEM's loss.py convolves the k×k outer-product window."""
    def ssim_2d(x, y, window=11, sigma=1.5):
        C = x.shape[1]
        t = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        g = (g / g.sum()).to(x)
        blur = lambda a: torch.nn.functional.conv2d(a, (g[:, None] * g[None, :]).expand(C, 1, window, window),
                                                    padding=window // 2, groups=C)
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        return (((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))).mean()

    g = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 32, 32), (1, 3, 7, 9)]:   # the second: a window larger than the image
        x = torch.rand(shape, generator=g, dtype=torch.float64)
        y = (x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        assert ssim(x, y).item() == pytest.approx(ssim_2d(x, y).item(), abs=1e-12)
        assert ssim(x, y) < 0.99


def test_losses_are_zero_for_a_perfect_prediction():
    I = torch.rand(2, 3, 32, 32)
    assert ssim(I, I) == pytest.approx(1.0, abs=1e-6)
    M = (torch.rand(2, 1, 32, 32) > 0.9).float()
    perfect = torch.cat([1 - M, M], dim=1)
    assert focal_loss(perfect, M) < 1e-6 < focal_loss(perfect.flip(1), M)
    terms = DetectorLoss()(I, I, perfect, M, [I], [I])
    assert set(terms) == {"l2", "ssim", "focal", "df", "total"} and terms["total"] < 1e-5


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_detector_dataset(tmp_path_factory.mktemp("det"))


COMBOS = list(itertools.product([True, False], [True, False], ["mvtec", "dtd"], ["copy", "grad"]))


@pytest.mark.parametrize("df, lk, source, update", COMBOS)
def test_every_switch_combination_trains_one_step(tiny_root, df, lk, source, update):
    cfg = make_config("tiny", {"data": str(tiny_root), "category": "disc", "df": df, "lk": lk,
                               "anomaly_source": source, "df_update": update})
    root = resolve_data(cfg.data)
    data = load_category(root.path, cfg.category, cfg.img_size)
    pool = build_source_pool(cfg.anomaly_source, root, cfg.category, cfg.img_size, cfg.source_per_category)
    synth = AnomalySynthesizer(data.train, data.kind, pool, synthesis_params(cfg))
    torch.manual_seed(0)
    nets = build_networks(cfg)
    R, D = nets["R"], nets["D"]
    F = nets["F"] if df else None
    assert ("F" in nets) == df
    assert any(isinstance(m, LargeKernelUnit) for m in D.modules()) == lk
    trained = [R, D] + ([F] if df and update == "grad" else [])
    optimizer = torch.optim.Adam([p for n in trained for p in n.parameters()], lr=1e-3)
    if F is not None and update == "copy":
        F.eval()
    batch = batch_at(synth, seed=0, rank=0, step=0, n=cfg.batch_size)  # what the input pipeline hands a step
    S = cfg.img_size
    assert batch["I_a"].shape == (cfg.batch_size, 3, S, S) and batch["M"].shape == (cfg.batch_size, 1, S, S)
    I_a = batch["I_a"]
    assert R(I_a).shape == (cfg.batch_size, 3, S, S)
    assert D(torch.cat([R(I_a), I_a], 1)).shape == (cfg.batch_size, 2, S, S)
    terms = _train_step(cfg, batch, R, D, F, DetectorLoss(), optimizer, torch.device("cpu"))
    assert ("df" in terms) == df and all(np.isfinite(v) for v in terms.values())
    assert all(p.grad is not None for p in R.parameters()) and all(p.grad is not None for p in D.parameters())
    if F is not None:
        features = F(batch["I"])
        assert [f.shape[1] for f in features] == [cfg.r_base * m for m in (4, 8, 8)]
        has_grad = [p.grad is not None for p in F.parameters()]
        assert all(has_grad) if update == "grad" else not any(has_grad)


def test_large_kernel_conv_equals_a_plain_depthwise_conv():
    """LargeKernelConv runs channels-last whatever its input's layout: speed, not values or gradients."""
    torch.manual_seed(0)
    conv = LargeKernelConv(6, kernel=9, small_kernel=9)  # no parallel branch: one depthwise conv + BN
    x = torch.randn(2, 6, 10, 10, dtype=torch.float64, requires_grad=True)
    conv = conv.double()
    out = conv(x)
    grad_x, = torch.autograd.grad((out * torch.cos(out)).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    reference = conv.lk_bn(torch.nn.functional.conv2d(x_ref, conv.lk.weight, padding=4, groups=6))
    grad_ref, = torch.autograd.grad((reference * torch.cos(reference)).sum(), x_ref)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.allclose(out, reference, atol=1e-10)
    assert torch.allclose(grad_x, grad_ref, atol=1e-10)

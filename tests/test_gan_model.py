"""DFMGAN networks, ADA, losses and metrics: structure, invariants, independent references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F_

from trainables.gan.augment import AugmentPipe, ada_adjust, bilinear_sample, rotate2d, scale2d
from trainables.gan.layers import ModulatedConv, fir_filter, upsample2d
from trainables.gan.loss import DFMGANLoss
from trainables.gan.metrics import clustered_mean_distance, compute_clustered_lpips, compute_kid, kid_from_features
from trainables.gan.networks import Discriminator, Generator, minibatch_std


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_nets(resolution=32, seed=0):
    torch.manual_seed(seed)
    G = Generator(32, 32, resolution, channel_base=256, channel_max=32, res_st=resolution // 4)
    D = Discriminator(resolution, 3, 256, 32)
    D_match = Discriminator(resolution, 4, 128, 16)
    return G, D, D_match


# ---------------------------------------------------------------- architecture

def test_parameter_counts_match_the_paper_at_256():
    """docs/dfmgan.md §3.1: stage-1 G 23,191,522; new stage-2 parts 3,669,703 (paper: 3.7M);
    D 24,001,089; D_match at 4096/128 1,502,113 (paper: 1.5M)."""
    torch.manual_seed(0)
    G = Generator(res_st=64)
    new = sum(n_params(m) for m in G.defect_modules())
    assert (n_params(G) - new, new) == (23_191_522, 3_669_703)
    assert n_params(Discriminator()) == 24_001_089
    assert n_params(Discriminator(256, 4, 4096, 128)) == 1_502_113
    assert (G.synthesis.num_ws, G.synthesis.num_defect_ws) == (14, 7)


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_and_ws_counts(resolution):
    G, D, D_match = tiny_nets(resolution)
    img, mask = G(torch.randn(4, 32), torch.randn(4, 32))
    assert img.shape == (4, 3, resolution, resolution) and mask.shape == (4, 1, resolution, resolution)
    assert G(torch.randn(4, 32))[1] is None                  # the defect branch cut off
    assert G.synthesis.num_ws == 2 * int(math.log2(resolution)) - 2 and G.synthesis.num_defect_ws == 7
    assert G.synthesis.res_resolutions == [resolution // 4, resolution // 2, resolution]
    assert D(img).shape == (4, 1) and D_match(torch.cat([img, mask], 1)).shape == (4, 1)
    with pytest.raises(ValueError, match="got shape"):
        D(mask)


def styled_layers_in_order(synthesis) -> list[tuple[str, int]]:
    """The backbone's styled layers in execution order, each with the W+ index StyleGAN2 gives it:
    one index per conv; a ToRGB reads the index after its block's convs (also the next conv0's)."""
    layers, i = [], 0
    for r in synthesis.resolutions:
        convs = ["conv1"] if r == 4 else ["conv0", "conv1"]
        for conv in convs:
            layers.append((f"b{r}.{conv}", i))
            i += 1
        layers.append((f"b{r}.head", i))
    assert i + 1 == synthesis.num_ws
    return layers


def test_every_w_plus_entry_reaches_the_image():
    """Each backbone W+ entry gets a gradient (also what path length and style mixing rely on);
    on W_defect+ entries 0..5 do and entry 6 is never read (DFMGAN's bookkeeping)."""
    torch.manual_seed(0)
    G = Generator(32, 32, 32, channel_base=256, channel_max=32, res_st=8, mask_threshold=float("-inf"))
    ws = torch.randn(2, G.synthesis.num_ws, 32, requires_grad=True)
    ws_defect = torch.randn(2, G.synthesis.num_defect_ws, 32, requires_grad=True)
    img, _ = G.synthesis(ws, ws_defect, noise_mode="const")    # gate open everywhere
    (img * torch.randn_like(img)).sum().backward()
    assert bool((ws.grad.abs().amax((0, 2)) > 0).all()), ws.grad.abs().amax((0, 2))
    per_defect_entry = ws_defect.grad.abs().amax((0, 2))
    assert bool((per_defect_entry[:6] > 0).all()) and float(per_defect_entry[6]) == 0


def test_style_mixing_at_each_crossover_changes_only_the_layers_from_it_on():
    torch.manual_seed(0)
    G = Generator(32, 32, 32, channel_base=256, channel_max=32)
    s = G.synthesis
    layers = styled_layers_in_order(s)
    outputs = []
    for name, _ in layers:
        s.get_submodule(name).register_forward_hook(lambda module, args, out: outputs.append(out))
    ws_a, ws_b = G.mapping(torch.randn(2, 32)), G.mapping(torch.randn(2, 32))
    with torch.no_grad():
        s(ws_a, noise_mode="const")
        reference = outputs[:]
        for k in range(1, s.num_ws):                            # 7 crossover points at 32 px (13 at 256)
            outputs.clear()
            s(torch.cat([ws_a[:, :k], ws_b[:, k:]], 1), noise_mode="const")
            for (name, index), out, ref in zip(layers, outputs, reference):
                if index < k:
                    assert torch.equal(out, ref), f"cutoff {k}: {name} (w {index}) changed"
                elif index == k:
                    assert not torch.allclose(out, ref), f"cutoff {k}: {name} (w {index}) unchanged"


def test_upsampling_conv_is_transposed_conv_then_fir_blur():
    """The fused 6×6 transposed conv = zero insertion, FIR blur (gain 4), 3×3 conv, away from the border."""
    torch.manual_seed(0)
    layer = ModulatedConv(5, 7, 8, 16, up=True)
    x = torch.randn(2, 5, 8, 8)
    fused = F_.conv_transpose2d(x, layer.up_kernel(), stride=2, padding=2)
    slow = F_.conv2d(upsample2d(x, fir_filter()), layer.weight, padding=1)
    assert fused.shape == slow.shape == (2, 7, 16, 16)
    torch.testing.assert_close(fused[..., 1:-1, 1:-1], slow[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_fir_upsampling_is_bilinear_inside_and_keeps_the_mask_sign():
    m = torch.randn(2, 1, 8, 8)
    up = upsample2d(m, fir_filter())
    bilinear = F_.interpolate(m, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1], atol=1e-6, rtol=1e-6)
    assert torch.equal(upsample2d(m.abs() + 0.1, fir_filter()) > 0, torch.ones_like(up, dtype=torch.bool))


def test_minibatch_std_matches_a_loop():
    x = torch.randn(8, 6, 4, 4)
    out = minibatch_std(x, group_size=4)
    for i in range(8):                                        # sample i is in group i mod 2
        group = x[i % 2::2]
        expected = group.std(0, unbiased=False).mean()
        torch.testing.assert_close(out[i, 6], torch.full((4, 4), float(expected)), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- DFMGAN invariants

def test_defect_image_equals_its_twin_outside_the_dilated_mask():
    """Residual features only enter where the gate is open, so beyond the generator's
    receptive-field margin around the (nearest-upsampled) ToMask gate the defect image and its
    defect-free twin (same z, same noise) agree; inside they differ."""
    G, _, _ = tiny_nets(32)
    G.eval()
    s = G.synthesis
    raw = -torch.ones(2, 1, s.res_st, s.res_st)
    raw[0, :, 0, 0] = 1                                       # sample 0: a corner pixel
    raw[1, :, 3:5, 4] = 1                                     # sample 1: two central pixels
    hook = getattr(s, f"res_b{s.res_st}").head.register_forward_hook(lambda module, args, out: raw)
    z = torch.randn(2, 32)
    with torch.no_grad():
        img, mask = G(z, torch.randn(2, 32), noise_mode="const")
        twin, _ = G(z, None, noise_mode="const")
    hook.remove()
    scale = s.img_resolution // s.res_st
    gate = F_.interpolate((raw >= 0).float(), scale_factor=scale, mode="nearest")
    margin = G.defect_margin()
    assert margin == 9
    region = F_.max_pool2d(gate, 2 * margin + 1, stride=1, padding=margin) > 0
    diff = (img - twin).abs().amax(1, keepdim=True)
    assert (~region).sum() > 200 * 2                          # the test has pixels to look at
    assert float(diff[~region].max()) <= 1e-5
    assert float(diff[gate > 0].min()) > 1e-4                 # the defect branch did change the gate's pixels
    torch.testing.assert_close(mask, upsample2d(upsample2d(raw, fir_filter()), fir_filter()))   # raw, upsampled


def _loss(lambda_match, lambda_ms, p=0.0):
    G, D, D_match = tiny_nets(32)
    G.requires_grad_(False)
    for module in G.defect_modules():
        module.requires_grad_(True)
    augment = AugmentPipe()
    augment.p = p
    return DFMGANLoss(G, D, augment, D_match, r1_gamma=1.0, lambda_match=lambda_match, lambda_ms=lambda_ms)


@pytest.mark.parametrize("lambdas, reaches", [((0.0, 0.0), False), ((1.0, 0.0), True), ((0.0, 0.1), True)])
def test_tomask_learns_only_through_d_match_and_mode_seeking(lambdas, reaches):
    """The hard gate blocks the image path (docs/dfmgan.md §3.2): with λ_match = λ_ms = 0, ToMask's gradient
    is exactly zero in every G phase; either term alone reaches it."""
    torch.manual_seed(1)
    loss = _loss(*lambdas)
    head = loss.G.synthesis.res_b8.head
    for phase in (loss.G_main, loss.G_reg):
        loss.G.zero_grad(set_to_none=True)
        sum(phase(4, "cpu").values()).backward()
        grads = [p.grad for p in head.parameters()]
        if phase == loss.G_main and reaches:
            assert any(g is not None and float(g.abs().max()) > 0 for g in grads)
        elif not reaches:
            assert all(g is None or float(g.abs().max()) == 0 for g in grads)
    # the residual convs still learn from D through the open gate
    assert loss.G.synthesis.res_b32.conv1.weight.grad is not None


def test_r1_through_ada_at_fixed_p_double_backward():
    """R1 differentiates D(ADA(x)) w.r.t. x and then w.r.t. D: needs the second derivative of
    the resampler, which F.grid_sample lacks."""
    torch.manual_seed(2)
    loss = _loss(1.0, 0.1, p=0.5)
    real = torch.randn(4, 3, 32, 32)
    G_inv = loss.augment.geometric_matrix(4, 32, 32, "cpu")
    assert not torch.allclose(G_inv, torch.eye(3).expand(4, 3, 3))   # geometric ops do fire at p=0.5
    r1 = loss.D_reg(real)["r1"]
    r1.backward()
    grads = [p.grad for p in loss.D.parameters() if p.grad is not None]
    assert float(r1.detach()) > 0 and grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    loss.Dm_reg(real, torch.randn(4, 1, 32, 32).sign())["Dm_r1"].backward()


def test_bilinear_sampler_matches_grid_sample_and_is_twice_differentiable():
    torch.manual_seed(3)
    img = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    ix = torch.rand(2, 5, 4, dtype=torch.float64) * 9 - 1.5     # some outside the image (zeros)
    iy = torch.rand(2, 5, 4, dtype=torch.float64) * 8 - 1.5
    grid = torch.stack([(ix + 0.5) / 7 * 2 - 1, (iy + 0.5) / 6 * 2 - 1], -1)
    ref = F_.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(bilinear_sample(img, ix, iy), ref)
    img.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x: bilinear_sample(x, ix, iy).square(), (img,))


def test_ada_geometry_identity_flip_and_controller():
    torch.manual_seed(4)
    pipe = AugmentPipe()
    x = F_.interpolate(torch.randn(2, 3, 4, 4), size=32, mode="bicubic")
    assert torch.equal(pipe(x), x)                                   # p = 0: untouched
    same = pipe.apply_geometric(x, torch.eye(3).repeat(2, 1, 1))     # Symlet-6 up/down is orthogonal
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = pipe.apply_geometric(x, scale2d(-torch.ones(2), torch.ones(2)))
    assert float((flipped - x.flip(3))[..., 4:-4].abs().mean()) < 0.01 * float(x.abs().mean())
    turned = pipe.apply_geometric(x, rotate2d(torch.full((2,), math.pi / 2)))
    assert min(float((turned - torch.rot90(x, k, (2, 3)))[..., 4:-4, 4:-4].abs().mean()) for k in (1, 3)) < 0.01
    assert ada_adjust(0.0, -1.0, 0.6, 32, 500) == 0.0                # clamped at 0 only
    assert ada_adjust(0.99, 1.0, 0.6, 32 * 4, 0.1) > 1               # no upper cap, as the reference
    assert ada_adjust(0.5, 0.6, 0.6, 32, 500) == 0.5


# ---------------------------------------------------------------- metrics

def kid_numpy(f1: np.ndarray, f2: np.ndarray, subsets: int, m: int, seed: int) -> float:
    """An independent unbiased-MMD² KID with torch-fidelity's subset protocol (seeded RandomState;
    per subset, m reals then m fakes without replacement): explicit off-diagonal sums."""
    rng = np.random.RandomState(seed)
    d = f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        off = ~np.eye(m, dtype=bool)
        values.append((kxx[off].sum() + kyy[off].sum()) / (m * (m - 1)) - 2 * kxy.sum() / m ** 2)
    return float(np.mean(values))


@pytest.mark.parametrize("n_real, n_gen", [(12, 12), (12, 40), (30, 20)])
def test_kid_matches_an_independent_numpy_estimator(n_real, n_gen):
    rng = np.random.default_rng(0)
    f_real = rng.normal(0, 1, (n_real, 64))
    f_gen = rng.normal(0.3, 1.2, (n_gen, 64))
    m = min(n_real, n_gen)
    ours = kid_from_features(torch.from_numpy(f_real), torch.from_numpy(f_gen))
    assert abs(ours - kid_numpy(f_real, f_gen, 100, m, 2020)) < 1e-6
    assert ours > 0.01                                                # the two sets do differ


def test_clustered_distance_by_brute_force():
    """Each fake joins its nearest real; capped clusters; mean over all clusters and non-zero ones."""
    torch.manual_seed(5)
    reals = torch.tensor([[0.0], [10.0], [20.0]])
    fakes = torch.tensor([[1.0], [2.0], [-1.0], [9.0], [30.0], [4.0]])
    l1 = lambda a, b: (a - b).abs().flatten(1).sum(1)
    # clusters: real 0 <- 1, 2, -1, 4 (cap 3 keeps 1, 2, -1); real 10 <- 9; real 20 <- 30
    mean_all, mean_nonzero = clustered_mean_distance(fakes, reals, l1, cap=3)
    pairs = (1 + 2 + 3) / 3
    assert mean_all == pytest.approx(pairs / 3) and mean_nonzero == pytest.approx(pairs)


def test_metrics_report_unavailable_without_weights(tmp_path, monkeypatch):
    """No Inception / AlexNet files here: the metric is 'unavailable' with a provisioning hint,
    never a number from random weights."""
    monkeypatch.setenv("DEFECT_SWEEPS_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    G, _, _ = tiny_nets(32)
    reals = np.zeros((3, 32, 32, 3), np.uint8)
    kid = compute_kid(G, reals, 4, "cpu", weights_dir=tmp_path)
    lp = compute_clustered_lpips(G, reals, 4, "cpu", weights_dir=tmp_path)
    assert kid["KID_x1e3"] == "unavailable" and "platform.weights fetch inception" in kid["KID_x1e3_note"]
    assert lp["clustered_LPIPS"] == "unavailable" and "fetch alexnet" in lp["clustered_LPIPS_note"]

"""DFMGAN's generation metrics (docs/dfmgan.md §5): KID (×10³) and clustered LPIPS, both optional.

KID: Inception-v3 2048-d pool features (torch-fidelity's port of the 2015-12-05 TF graph) of
all real defect images vs `n_gen` generated ones (noise 'random', independent z and z_defect),
torch-fidelity's unbiased polynomial-kernel MMD² averaged over 100 subsets of size
min(n_real, n_gen, 1000), reported ×10³. Clustered LPIPS (Ojha et al. 2021, DFMGAN's
`clpips1k`): LPIPS-AlexNet assigns each generated image (seeds 0..n-1, z_defect = z, noise
'const') to its nearest real image, keeps at most 200 per cluster, and averages the mean
pairwise LPIPS within each cluster over all clusters (clusters of ≤ 1 image count 0). Unlike
the reference, reals are scaled to [-1, 1] before LPIPS (the reference's bug, docs/dfmgan.md §5.2). Weights are never
downloaded here: without them a metric is the string "unavailable" and its `_note` says how
to provision them.
"""

import numpy as np
import torch

from trainables.errors import WeightsUnavailable
from trainables.gan.generate import to_uint8
from trainables.weights import resolve_weights

KID_SUBSETS = 100
KID_MAX_SUBSET = 1000


def unavailable(name: str, reason: str) -> dict:
    return {name: "unavailable", f"{name}_note": reason}


# ---------------------------------------------------------------- KID

def kid_from_features(f_real: torch.Tensor, f_gen: torch.Tensor, subsets: int = KID_SUBSETS,
                      subset_size: int | None = None, seed: int = 2020) -> float:
    """torch-fidelity's KID estimator (raw, not ×10³) on feature matrices [n, d], in float64."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    m = subset_size or min(len(f_real), len(f_gen), KID_MAX_SUBSET)
    out = kid_features_to_metric(torch.as_tensor(f_real, dtype=torch.float64),
                                 torch.as_tensor(f_gen, dtype=torch.float64),
                                 kid_subsets=subsets, kid_subset_size=m, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN]


@torch.no_grad()
def inception_features(images: np.ndarray, weights_path, device, batch: int = 64) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> Inception-v3 pool features [N, 2048] (resized to 299 inside)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights_path)).to(device)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return torch.cat([net(x[i:i + batch].to(device))[0].cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def compute_kid(G, reals: np.ndarray, n_gen: int, device, seed: int = 0, weights_dir=None) -> dict:
    """{"KID_x1e3": value | "unavailable", ...} of G (use G_ema) against uint8 reals [K, H, W, 3]."""
    try:
        path = resolve_weights("inception", weights_dir)
    except WeightsUnavailable as error:
        return unavailable("KID_x1e3", str(error))
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    fakes = []
    for i in range(0, n_gen, 32):
        n = min(32, n_gen - i)
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        zd = torch.randn(n, G.z_dim, generator=gen).to(device) if G.has_defects else None
        fakes.append(to_uint8(G(z, zd, noise_mode="random")[0]))
    f_real = inception_features(reals, path, device)
    f_gen = inception_features(np.concatenate(fakes), path, device)
    return {"KID_x1e3": round(1e3 * kid_from_features(f_real, f_gen), 4), "KID_n_gen": n_gen,
            "KID_n_real": len(reals)}


# ---------------------------------------------------------------- clustered LPIPS

def clustered_mean_distance(fakes: torch.Tensor, reals: torch.Tensor, distance, cap: int = 200) -> tuple[float, float]:
    """Ojha et al.'s intra-cluster distance: each fake joins its nearest real (by `distance`,
    a callable (a [n, ...], b [n, ...]) -> [n]); the first `cap` per cluster are kept; per
    cluster the mean distance over pairs i < j (0 for ≤ 1 member). Returns (mean over all
    clusters, mean over non-zero clusters)."""
    members: list[list[int]] = [[] for _ in range(len(reals))]
    for i in range(len(fakes)):
        d = distance(fakes[i:i + 1].expand(len(reals), *fakes.shape[1:]), reals)
        nearest = int(torch.argmin(d))
        if len(members[nearest]) < cap:
            members[nearest].append(i)
    scores = []
    for idx in members:
        if len(idx) < 2:
            scores.append(0.0)
            continue
        a, b = torch.triu_indices(len(idx), len(idx), offset=1)
        ids = torch.tensor(idx)
        pair_d = torch.cat([distance(fakes[ids[a[k:k + 256]]], fakes[ids[b[k:k + 256]]])
                            for k in range(0, len(a), 256)])
        scores.append(float(pair_d.mean()))
    nonzero = [s for s in scores if s > 0]
    return float(np.mean(scores)), float(np.mean(nonzero)) if nonzero else 0.0


def lpips_alex(weights_dir=None):
    """LPIPS v0.1 with AlexNet (linear heads from the lpips package, trunk from the provisioned
    torchvision file); WeightsUnavailable when the trunk is not provisioned."""
    import lpips
    import torchvision

    path = resolve_weights("lpips_alex", weights_dir)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)   # no download
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for piece in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in piece.named_children():
            layer.load_state_dict(alexnet.features[int(name)].state_dict())
    return model.eval().requires_grad_(False)


@torch.no_grad()
def compute_clustered_lpips(G, reals: np.ndarray, n_gen: int, device, cap: int = 200, weights_dir=None) -> dict:
    """{"clustered_LPIPS": value | "unavailable", ...} of G against uint8 reals [K, H, W, 3]."""
    try:
        model = lpips_alex(weights_dir).to(device)
    except WeightsUnavailable as error:
        return unavailable("clustered_LPIPS", str(error))
    G.eval()
    fakes = []
    for seed in range(n_gen):                    # the reference: seed s gives z, and z_defect = z
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        fakes.append(G(z, z if G.has_defects else None, noise_mode="const")[0])
    fakes = torch.cat(fakes)
    real = torch.from_numpy(np.ascontiguousarray(reals)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
    mean_all, mean_nonzero = clustered_mean_distance(fakes, real, lambda a, b: model(a, b).flatten(), cap)
    return {"clustered_LPIPS": round(mean_all, 5), "clustered_LPIPS_nonzero": round(mean_nonzero, 5)}

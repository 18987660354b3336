"""Training objective of the detector: L2, SSIM, deep-feature consistency, focal (docs/detector.md §4.4).

L = w_l2·L2(I_r, I) + w_ssim·(1 − SSIM(I_r, I)) + w_df·L_DF + w_focal·Focal(P, M).
Defaults w = 1 / 0.8 / 0.2 / 1 are mapping A (docs/detector.md §4.4) of the paper's λ1, λ2, λ3 = 1, 0.8,
0.2 (DRAEM keeps unit weights on L2 and focal); mapping B is w_focal = 1, w_l2 = w_ssim =
0.8, w_df = 0.2. SSIM and focal follow DRAEM's code (Gaussian 11×11 window σ 1.5, zero
padding; focal on softmax probabilities with γ = 2 and target smoothing 1e-5).
Not here: the networks and how F is refreshed (train.py).
"""

import torch
import torch.nn.functional as F_


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian; DRAEM's 2-D window is its outer product. [size]"""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         value_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two [N, C, H, W] images, per-channel Gaussian window, zero padding (DRAEM)."""
    N, C, H, W = x.shape
    g = gaussian_window(window, sigma).to(x)
    pad = window // 2
    # The window is separable: a 1×k pass then a k×1 pass, each zero-padded, is the k×k conv
    # with 2k instead of k² multiply-adds per pixel; the five maps are blurred in one call.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [N, 5C, H, W]
    rows = g.view(1, 1, 1, window).expand(5 * C, 1, 1, window)
    cols = g.view(1, 1, window, 1).expand(5 * C, 1, window, 1)
    blurred = F_.conv2d(F_.conv2d(maps, rows, padding=(0, pad), groups=5 * C), cols, padding=(pad, 0), groups=5 * C)
    mu_x, mu_y, xx, yy, xy = blurred.split(C, dim=1)
    var_x = xx - mu_x ** 2
    var_y = yy - mu_y ** 2
    cov = xy - mu_x * mu_y
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean()


def focal_loss(P: torch.Tensor, M: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """DRAEM's focal loss on probabilities P [N, 2, H, W] against a mask M [N, 1, H, W] in {0, 1}."""
    target = torch.cat([1 - M, M], dim=1).clamp(smooth, 1 - smooth)
    p_t = (target * P).sum(dim=1) + smooth
    return (-(1 - p_t) ** gamma * p_t.log()).mean()


def feature_consistency(features_r: list[torch.Tensor], features_t: list[torch.Tensor],
                        normalize: bool = False) -> torch.Tensor:
    """L_DF = Σ_l mean((F_l(I_r) − sg(F_l(I)))²); `normalize` divides each level by mean(F_l(I)²)."""
    total = features_r[0].new_zeros(())
    for f_r, f_t in zip(features_r, features_t):
        f_t = f_t.detach()
        level = ((f_r - f_t) ** 2).mean()
        if normalize:
            level = level / (f_t.pow(2).mean() + 1e-6)
        total = total + level
    return total


class DetectorLoss:
    """The detector's objective with named terms; returns unweighted terms and the weighted total."""

    def __init__(self,
                 w_l2: float = 1.0,
                 w_ssim: float = 0.8,
                 w_df: float = 0.2,          # 0 or df off: L_DF is not computed
                 w_focal: float = 1.0,
                 ssim_window: int = 11,
                 focal_gamma: float = 2.0,
                 df_normalize: bool = False):
        self.weights = {"l2": w_l2, "ssim": w_ssim, "df": w_df, "focal": w_focal}
        self.ssim_window = ssim_window
        self.focal_gamma = focal_gamma
        self.df_normalize = df_normalize

    def __call__(self, I: torch.Tensor, I_r: torch.Tensor, P: torch.Tensor, M: torch.Tensor,
                 features_r: list[torch.Tensor] | None = None,
                 features_t: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        # SSIM and focal in fp32 even under autocast (docs/detector.md §4.4)
        terms = {
            "l2": F_.mse_loss(I_r.float(), I.float()),
            "ssim": 1 - ssim(I_r.float(), I.float(), self.ssim_window),
            "focal": focal_loss(P.float(), M.float(), self.focal_gamma),
        }
        if features_r is not None:
            terms["df"] = feature_consistency(features_r, features_t, self.df_normalize)
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

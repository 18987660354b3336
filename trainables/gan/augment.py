"""ADA, the adaptive discriminator augmentation of StyleGAN2-ADA with its 'bgc' pipeline (docs/dfmgan.md §2.7).

Every image D sees (real and fake, in every phase, R1 included) goes through `AugmentPipe`:
each of the 'bgc' ops (blit: x-flip, 90° rotation, integer translation; geometric: isotropic
scale, pre/post arbitrary rotation, anisotropic scale, fractional translation; colour:
brightness, contrast, luma flip, hue rotation, saturation) fires with probability p per
sample. The geometric ops compose into one 3×3 matrix applied by reflect padding, Symlet-6
×2 upsampling, bilinear resampling and Symlet-6 ×2 downsampling; the colour ops into one
4×4 matrix. The bilinear resampler is a gather, not `F.grid_sample`, because PyTorch has no
second derivative for grid_sample and R1 differentiates through the augmentation (the
reference's custom op works only on torch 1.7-1.9, DFMGAN issues #35, #50). `ada_adjust` is
the p controller. Not here: the 'filter', 'noise' and 'cutout' ops (outside 'bgc').
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F_

from trainables.gan.layers import SYM6


# ---------------------------------------------------------------- matrices, one per sample [N, k, k]

def _eye(n: int, k: int, device) -> torch.Tensor:
    return torch.eye(k, device=device).repeat(n, 1, 1)


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(len(tx), 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(len(sx), 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    m = _eye(len(theta), 3, theta.device)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def translate3d(t: torch.Tensor) -> torch.Tensor:
    m = _eye(len(t), 4, t.device)
    m[:, :3, 3] = t[:, None]
    return m


def rotate3d(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotation by theta about the unit vector axis[:3] (Rodrigues), homogeneous 4×4."""
    x, y, z = axis[:3]
    c, s = theta.cos(), theta.sin()
    cc = 1 - c
    m = _eye(len(theta), 4, theta.device)
    rows = [[x * x * cc + c, x * y * cc - z * s, x * z * cc + y * s],
            [y * x * cc + z * s, y * y * cc + c, y * z * cc - x * s],
            [z * x * cc - y * s, z * y * cc + x * s, z * z * cc + c]]
    for i in range(3):
        for j in range(3):
            m[:, i, j] = rows[i][j]
    return m


# ---------------------------------------------------------------- resampling with double backward

def bilinear_sample(img: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup at pixel-index coordinates (pixel k's centre is k), zeros outside.
    Built from gathers, so it is differentiable twice in `img` (R1 through ADA). [N, C, Ho, Wo]"""
    N, C, H, W = img.shape
    Ho, Wo = ix.shape[1:]
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    flat = img.reshape(N, C, H * W)
    out = 0
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        index = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long().reshape(N, 1, Ho * Wo)
        values = flat.gather(2, index.expand(N, C, Ho * Wo)).reshape(N, C, Ho, Wo)
        out = out + values * (weight * inside)[:, None]
    return out


class AugmentPipe(nn.Module):
    """ADA's 'bgc' pipeline; set `p` (the per-op probability) from outside, e.g. by `ada_adjust`."""

    def __init__(self,
                 xint_max: float = 0.125,      # integer translation, fraction of the size
                 scale_std: float = 0.2,       # log2 std of the isotropic scale
                 rotate_max: float = 1.0,      # arbitrary rotation range, fraction of a half turn (±π)
                 aniso_std: float = 0.2,       # log2 std of the anisotropic scale
                 xfrac_std: float = 0.125,     # fractional translation std, fraction of the size
                 brightness_std: float = 0.2,
                 contrast_std: float = 0.5,    # log2
                 hue_max: float = 1.0,         # fraction of a half turn
                 saturation_std: float = 1.0): # log2
        super().__init__()
        self.p = 0.0
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        h = torch.tensor(SYM6, dtype=torch.float32)
        # where ×2 synthesis puts input pixel i: upsampled index 2i + delay, with delay = the filter's
        # DC group delay (first moment, 5.098 taps) minus the transposed conv's padding (5); without it
        # a flip or a rotation would also shift the image by a third of a pixel
        self.delay = float((torch.arange(12) * h).sum() / h.sum()) - 5
        self.register_buffer("wavelet", torch.outer(h, h), persistent=False)      # [12, 12], Σ = 2
        self.register_buffer("luma_axis", torch.tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        N, C, H, W = images.shape
        if self.p <= 0:
            return images
        G_inv = self.geometric_matrix(N, H, W, images.device)
        if not torch.equal(G_inv, _eye(N, 3, images.device)):
            images = self.apply_geometric(images, G_inv)
        Cm = self.colour_matrix(N, images.device)
        images = Cm[:, :3, :3] @ images.reshape(N, C, H * W) + Cm[:, :3, 3:]
        return images.reshape(N, C, H, W)

    def _draw(self, values: torch.Tensor, identity: float, p: float) -> torch.Tensor:
        """`values` where a per-sample coin with probability p fires, else the identity value."""
        fire = torch.rand(values.shape[0], device=values.device) < p
        fire = fire.reshape(-1, *[1] * (values.dim() - 1))
        return torch.where(fire, values, torch.full_like(values, identity))

    def geometric_matrix(self, N: int, H: int, W: int, device) -> torch.Tensor:
        """Output pixel (centred, px) -> input pixel, composed in the reference's order. [N, 3, 3]"""
        p, G = self.p, _eye(N, 3, device)
        flip = self._draw(torch.floor(torch.rand(N, device=device) * 2), 0, p)
        G = G @ scale2d(1 - 2 * flip, torch.ones_like(flip))
        quarter = self._draw(torch.floor(torch.rand(N, device=device) * 4), 0, p)
        G = G @ rotate2d(math.pi / 2 * quarter)
        t = self._draw((torch.rand(N, 2, device=device) * 2 - 1) * self.xint_max, 0, p)
        G = G @ translate2d(-torch.round(t[:, 0] * W), -torch.round(t[:, 1] * H))
        s = self._draw(torch.exp2(torch.randn(N, device=device) * self.scale_std), 1, p)
        G = G @ scale2d(1 / s, 1 / s)
        p_rot = 1 - math.sqrt(max(1 - p, 0))          # applied twice: P(any rotation) ≈ p
        theta = self._draw((torch.rand(N, device=device) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot)
        G = G @ rotate2d(theta)
        s = self._draw(torch.exp2(torch.randn(N, device=device) * self.aniso_std), 1, p)
        G = G @ scale2d(1 / s, s)
        theta = self._draw((torch.rand(N, device=device) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot)
        G = G @ rotate2d(theta)
        t = self._draw(torch.randn(N, 2, device=device) * self.xfrac_std, 0, p)
        return G @ translate2d(-t[:, 0] * W, -t[:, 1] * H)

    def colour_matrix(self, N: int, device) -> torch.Tensor:
        p, v, Cm = self.p, self.luma_axis, _eye(N, 4, device)
        b = self._draw(torch.randn(N, device=device) * self.brightness_std, 0, p)
        Cm = translate3d(b) @ Cm
        c = self._draw(torch.exp2(torch.randn(N, device=device) * self.contrast_std), 1, p)
        Cm = torch.diag_embed(torch.stack([c, c, c, torch.ones_like(c)], 1)) @ Cm
        vv = torch.outer(v, v)
        flip = self._draw(torch.floor(torch.rand(N, device=device) * 2), 0, p)
        Cm = (torch.eye(4, device=device) - 2 * vv * flip[:, None, None]) @ Cm
        theta = self._draw((torch.rand(N, device=device) * 2 - 1) * math.pi * self.hue_max, 0, p)
        Cm = rotate3d(v, theta) @ Cm
        s = self._draw(torch.exp2(torch.randn(N, device=device) * self.saturation_std), 1, p)
        return (vv + (torch.eye(4, device=device) - vv) * s[:, None, None]) @ Cm

    def apply_geometric(self, images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Reflect-pad, Symlet-6 ×2 up, bilinear resample, Symlet-6 ×2 down (its exact adjoint). [N, C, H, W]"""
        N, C, H, W = images.shape
        half = torch.tensor([W / 2, H / 2], device=images.device)
        corners = torch.tensor([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1.0]], device=images.device)
        corners[:, :2] *= half
        reach = (G_inv @ corners.T)[:, :2].abs().amax(dim=(0, 2)) - half   # how far outside the input
        m = int(min(max(math.ceil(float(reach.max())), 0) + 6, H - 1, W - 1))   # + 6 px: the filters' support
        x = F_.pad(images, [m, m, m, m], mode="reflect")
        k = self.wavelet[None, None].expand(C, 1, 12, 12).to(x.dtype)
        x = F_.conv_transpose2d(x, k * 2, stride=2, padding=5, groups=C)  # [N, C, 2(H+2m), 2(W+2m)]
        # sample the up-sampled output pixels -5..2H+4 (what the stride-2 12-tap analysis needs)
        u = torch.arange(-5, 2 * W + 5, device=x.device, dtype=x.dtype)
        w = torch.arange(-5, 2 * H + 5, device=x.device, dtype=x.dtype)
        oy, ox = torch.meshgrid((w + 1 - self.delay) / 2 - H / 2, (u + 1 - self.delay) / 2 - W / 2, indexing="ij")
        out = torch.stack([ox, oy, torch.ones_like(ox)], 0).reshape(3, -1)   # [3, P] centred px
        src = (G_inv @ out).reshape(N, 3, len(w), len(u))
        ix = 2 * (src[:, 0] + W / 2 + m) - 1 + self.delay
        iy = 2 * (src[:, 1] + H / 2 + m) - 1 + self.delay
        x = bilinear_sample(x, ix, iy)                                        # [N, C, 2H+10, 2W+10]
        return F_.conv2d(x, k / 2, stride=2, groups=C)                        # [N, C, H, W]


def ada_adjust(p: float, sign_mean: float, target: float, n_images: int, ada_kimg: float) -> float:
    """ADA's controller: p moves by n_images/(ada_kimg·1000) towards E[sign D(x_real)] = target;
    clamped at 0 only, as in the reference (nothing caps it at 1, DFMGAN issue #16)."""
    step = ((sign_mean > target) - (sign_mean < target)) * n_images / (ada_kimg * 1000)
    return max(p + step, 0.0)

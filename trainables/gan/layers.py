"""StyleGAN2 primitives in plain PyTorch (Karras et al. 2020, as used by DFMGAN; docs/dfmgan.md §2.2-2.5).

Equalised-learning-rate fully connected and convolution layers, the [1,3,3,1] FIR filter for
every up- and downsampling, the modulated 3×3 convolution with demodulation and per-layer
noise, and the ToRGB/ToMask 1×1 modulated convolution. No custom CUDA ops: resampling is a
depthwise convolution (or, in the upsampling conv, folded into a 6×6 transposed conv),
modulation scales activations before and after a shared convolution (the non-fused form,
mathematically equal to the grouped one). fp32 only, so the ±256 clamp
of the reference's fp16 path is dropped (docs/dfmgan.md §2.9).
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F_

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)


def check_shape(name: str, x: torch.Tensor, expected: tuple) -> None:
    """Raise on a shape mismatch at a block border; `None` in `expected` matches any size."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}, expected {expected} (None = any)")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """'lrelu' = leaky ReLU 0.2 with gain √2 (keeps the signal variance); 'linear' = identity."""
    if activation == "lrelu":
        return F_.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    assert activation == "linear", activation
    return x


# ---------------------------------------------------------------- FIR resampling (docs/dfmgan.md §2.2)

def fir_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable 2-D low-pass filter, outer product of `taps`, normalised to sum 1. [k, k]"""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _depthwise(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int], stride: int = 1) -> torch.Tensor:
    N, C, H, W = x.shape
    x = F_.pad(x, pad)
    weight = f.flip(0, 1)[None, None].expand(C, 1, *f.shape).to(x.dtype)   # conv = correlation: flip
    return F_.conv2d(x, weight, stride=stride, groups=C)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """×2: zero insertion, then the FIR filter with gain 4 (2 per axis). [N, C, 2H, 2W]"""
    N, C, H, W = x.shape
    z = x.new_zeros(N, C, H, 2, W, 2)
    z[:, :, :, 0, :, 0] = x
    z = z.reshape(N, C, 2 * H, 2 * W)
    k = f.shape[0]
    p0, p1 = (k + 1) // 2, (k - 2) // 2        # 4 taps: pad 2 before, 1 after -> exactly 2H
    return _depthwise(z, f * 4, (p0, p1, p0, p1))


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """FIR low-pass, then keep every second pixel. [N, C, H/2, W/2]"""
    p = (f.shape[0] - 2 + 1) // 2               # 4 taps: pad 1 on each side
    return _depthwise(x, f, (p, p, p, p), stride=2)


# ---------------------------------------------------------------- equalised-lr layers (docs/dfmgan.md §2.2)

class FullyConnected(nn.Module):
    """Dense layer with equalised learning rate: weight N(0,1)/lr_mul, scaled at run time."""

    def __init__(self,
                 in_features: int,
                 out_features: int,
                 activation: str = "linear",   # linear | lrelu
                 lr_mul: float = 1.0,          # learning-rate multiplier (0.01 in the mapping network)
                 bias_init: float = 0.0):      # 1 for style affines, so styles start at 1
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F_.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return activate(x, self.activation)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, {self.activation}"


class Conv2dLayer(nn.Module):
    """Plain k×k convolution with equalised learning rate and optional FIR ×2 downsampling (D)."""

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 activation: str = "linear",
                 bias: bool = True,
                 down: bool = False):          # ×½: FIR blur, then a stride-2 convolution
        super().__init__()
        self.activation, self.down, self.k = activation, down, kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.register_buffer("fir", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down and self.k == 1:
            x = F_.conv2d(downsample2d(x, self.fir), w)
        elif self.down:
            # blur with 2 px of padding, then a valid stride-2 k×k conv: H -> H/2 for k = 3
            x = F_.conv2d(_depthwise(x, self.fir, (2, 2, 2, 2)), w, stride=2)
        else:
            x = F_.conv2d(x, w, padding=self.k // 2)
        if self.bias is not None:
            x = x + self.bias[None, :, None, None]
        return activate(x, self.activation)


# ---------------------------------------------------------------- modulated convolutions (docs/dfmgan.md §2.4)

class ModulatedConv(nn.Module):
    """StyleGAN2's synthesis layer: style-modulated 3×3 conv (×2 upsampling optional), demodulation,
    noise, bias, lrelu."""

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 w_dim: int,
                 resolution: int,              # output resolution (noise buffer size)
                 up: bool = False):            # ×2: transposed conv, then the FIR blur (fused)
        super().__init__()
        self.up, self.resolution = up, resolution
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        if up:
            # full 2-D convolution of a 3×3 kernel with the FIR (gain 4), flipped, as one linear map:
            # placement[s, t, 5-u, 5-v] = 4·f[u-s, v-t] (an einsum, far faster than 9·C² tiny convs)
            f, placement = fir_filter() * 4, torch.zeros(3, 3, 6, 6)
            for s_ in range(3):
                for t_ in range(3):
                    placement[s_, t_, s_:s_ + 4, t_:t_ + 4] = f
            self.register_buffer("up_placement", placement.flip(2, 3), persistent=False)

    def up_kernel(self) -> torch.Tensor:
        """The 3×3 weight composed with the FIR filter (gain 4) as one 6×6 stride-2 transposed conv:
        the reference's transposed conv followed by its blur, in one op. [C_in, C_out, 6, 6]"""
        return torch.einsum("oist,stuv->iouv", self.weight, self.up_placement)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        N, C, H, W = x.shape
        s = self.affine(w)                                               # [N, C_in]
        # demodulation: d_o = (Σ_i,k (w_oik s_i)²)^(-1/2), computed without per-sample weights
        d = (self.weight.square().sum([2, 3]) @ s.square().T + 1e-8).rsqrt().T   # [N, C_out]
        x = x * s[:, :, None, None]
        if self.up:
            x = F_.conv_transpose2d(x, self.up_kernel(), stride=2, padding=2)   # [N, C_out, 2H, 2W]
        else:
            x = F_.conv2d(x, self.weight, padding=1)                     # [N, C_out, H, W]
        x = x * d[:, :, None, None]
        if noise_mode == "random":
            x = x + torch.randn(N, 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        else:
            assert noise_mode == "none", noise_mode
        return activate(x + self.bias[None, :, None, None], "lrelu")


class ToImage(nn.Module):
    """ToRGB (3 channels) or DFMGAN's ToMask (1 channel): 1×1 modulated conv, no demodulation, linear."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w) * self.weight_gain                             # [N, C_in]
        x = F_.conv2d(x * s[:, :, None, None], self.weight)
        return x + self.bias[None, :, None, None]


# ---------------------------------------------------------------- ADA's wavelet (docs/dfmgan.md §2.7)

# Symlet-6 low-pass decomposition filter (orthonormal: Σh = √2, Σh² = 1, 6 vanishing moments),
# ADA's anti-aliasing filter for its geometric transforms.
SYM6 = np.array([0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
                 0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
                 -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148])

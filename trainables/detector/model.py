"""Networks of the detector of Peng et al. (Sensors 2024), built on DRAEM (ICCV 2021).

R: the reconstruction auto-encoder (DRAEM's reconstructive sub-network, paper §3.2).
F: the deep feature extractor of the feature-consistency loss (paper §3.2): a copy of R's encoder
   (weights and BN buffers copied after every step, or trained by gradient), or an
   ImageNet VGG19 trunk whose weights the caller loads.
D: the defect prediction network (DRAEM's discriminative U-Net, §3.3), optionally with a
   RepLKNet large-kernel unit after each of its four deepest encoder stages; the units fold
   into one depthwise k×k convolution for inference (`D.reparameterize()`).

Pure modules: no file or network I/O. Widths are `base × multiplier`, so the published
networks (R base 128, D base 64) and CPU-sized ones share one definition.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F_

R_MULTIPLIERS = (1, 2, 4, 8, 8)       # DRAEM R encoder b1..b5: 128, 256, 512, 1024, 1024
D_MULTIPLIERS = (1, 2, 4, 8, 8, 8)    # DRAEM D encoder e1..e6: 64, 128, 256, 512, 512, 512
VGG_LEVELS = {1: 1, 2: 6, 3: 11, 4: 20, 5: 29}   # df level -> index of relu{level}_1 in vgg19.features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_shape(name: str, x: torch.Tensor, expected: tuple) -> None:
    """Raise on a shape mismatch at a block border; `None` in `expected` matches any size."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}, expected {expected} (None = any)")


# ---------------------------------------------------------------- primitives

def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """DRAEM's block: two 3×3 conv-BN-ReLU layers, c_in → c_mid → c_out."""

    def __init__(self,
                 c_in: int,
                 c_out: int,
                 c_mid: int | None = None):  # width between the convs; None = c_out
        c_mid = c_out if c_mid is None else c_mid
        super().__init__(*conv_bn_relu(c_in, c_mid), *conv_bn_relu(c_mid, c_out))


class UpBlock(nn.Sequential):
    """DRAEM's upsampling: bilinear ×2 (align_corners=True), then one conv-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         *conv_bn_relu(c_in, c_out))


def draem_init(module: nn.Module) -> None:
    """DRAEM's initialisation: conv weights ~ N(0, 0.02), BN weight ~ N(1, 0.02), BN bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- R: reconstruction auto-encoder

class ReconstructiveEncoder(nn.Module):
    """R's encoder (DRAEM; docs/detector.md §4.1): blocks b1..b5, max-pool between them; returns every level."""

    def __init__(self,
                 base: int = 128,        # width of b1; DRAEM uses 128
                 in_channels: int = 3):
        super().__init__()
        self.widths = tuple(base * m for m in R_MULTIPLIERS)
        c_in = in_channels
        for level, width in enumerate(self.widths, start=1):
            self.add_module(f"b{level}", ConvBlock(c_in, width))
            c_in = width
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        N, C, H, W = x.shape
        features = []
        for level in range(1, len(self.widths) + 1):
            x = getattr(self, f"b{level}")(x if level == 1 else self.pool(x))
            features.append(x)  # b_l: [N, base*m_l, H/2^(l-1), W/2^(l-1)]
        return features


class ReconstructiveDecoder(nn.Module):
    """R's decoder (DRAEM; docs/detector.md §4.1): no skips; up/db 1..4 back to full size, linear 3×3 output."""

    def __init__(self,
                 base: int = 128,
                 out_channels: int = 3):
        super().__init__()
        widths = (base * 8, base * 4, base * 2, base, base)  # bottleneck, db1..db4
        for stage in range(1, 5):
            c_in = widths[stage - 1]
            # DRAEM's db blocks narrow in their second conv, not their first
            self.add_module(f"up{stage}", UpBlock(c_in, c_in))
            self.add_module(f"db{stage}", ConvBlock(c_in, widths[stage], c_mid=c_in))
        self.out = nn.Conv2d(base, out_channels, 3, padding=1)  # no activation, as in DRAEM

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        x = bottleneck
        for stage in range(1, 5):
            x = getattr(self, f"db{stage}")(getattr(self, f"up{stage}")(x))
        return self.out(x)  # [N, 3, H, W]


class ReconstructionNet(nn.Module):
    """R (paper §3.2): the auto-encoder that maps a synthetic anomalous image I_a to I_r ≈ I."""

    def __init__(self,
                 base: int = 128):       # DRAEM: 128
        super().__init__()
        self.encoder = ReconstructiveEncoder(base)
        self.decoder = ReconstructiveDecoder(base)
        self.apply(draem_init)

    def forward(self, I_a: torch.Tensor) -> torch.Tensor:
        N, C, H, W = I_a.shape
        check_shape("R input", I_a, (None, 3, None, None))
        if H % 16 or W % 16:
            raise ValueError(f"R input: got {H}x{W}, expected a size divisible by 16")
        return self.decoder(self.encoder(I_a)[-1])  # I_r: [N, 3, H, W]


# ---------------------------------------------------------------- F: deep feature extractor

class EncoderFeatures(nn.Module):
    """F, reading A (docs/detector.md §4.2): R's encoder architecture; returns the chosen levels b_l."""

    def __init__(self,
                 base: int = 128,
                 levels: tuple[int, ...] = (3, 4, 5)):   # which of b1..b5 enter L_DF
        super().__init__()
        self.levels = levels
        self.encoder = ReconstructiveEncoder(base)
        self.apply(draem_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        return [features[level - 1] for level in self.levels]


class VGGFeatures(nn.Module):
    """F, reading B (docs/detector.md §4.2): VGG19 `features` up to the deepest chosen relu{l}_1."""

    def __init__(self,
                 levels: tuple[int, ...] = (1, 2, 3)):   # relu1_1, relu2_1, relu3_1
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.levels = levels
        self.taps = self.taps_for(levels)
        self.features = make_layers(cfgs["E"])[: max(self.taps) + 1]  # = vgg19().features, no classifier
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @staticmethod
    def taps_for(levels: tuple[int, ...]) -> tuple[int, ...]:
        """Indices in vgg19.features of relu{level}_1."""
        return tuple(VGG_LEVELS[level] for level in levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std  # ImageNet normalisation inside F only (docs/detector.md §4.2)
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out


@torch.no_grad()
def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Parameter copying (paper §4.4.3): target's weights *and* buffers := source's, in place."""
    for (name, p_src), (name_t, p_dst) in zip(source.named_parameters(), target.named_parameters()):
        assert name == name_t, (name, name_t)
        p_dst.copy_(p_src)
    for (name, b_src), (name_t, b_dst) in zip(source.named_buffers(), target.named_buffers()):
        assert name == name_t, (name, name_t)
        b_dst.copy_(b_src)


# ---------------------------------------------------------------- RepLK units (RepLKNet, CVPR 2022)

FFT_MIN_KERNEL = 13   # "auto": FFT weight gradients from this kernel size on, on CPU (docs/detector.md §4.6)


def depthwise_weight_grad_fft(x: torch.Tensor, grad: torch.Tensor, kernel: int) -> torch.Tensor:
    """Weight gradient of a stride-1 depthwise k×k conv with k // 2 zero padding, by FFT:
    dW[c, i, j] = Σ_n Σ_p x[n, c, p + (i, j) − k // 2] · grad[n, c, p], the cross-correlation of x
    and grad at lags −k//2..k//2. FFTs of a power-of-two size ≥ H + k // 2 hold those lags
    without wrap-around. [C, 1, k, k]"""
    N, C, H, W = x.shape
    r = kernel // 2
    size = tuple(1 << (n + r - 1).bit_length() for n in (H, W))
    spectrum = (torch.fft.rfft2(x, s=size) * torch.fft.rfft2(grad, s=size).conj()).sum(0)  # [C, h, w/2+1]
    correlation = torch.fft.irfft2(spectrum, s=size)  # [C, h, w]: lag d at index d mod size
    rows, cols = (torch.arange(-r, r + 1, device=x.device) % n for n in size)
    return correlation[:, rows][:, :, cols].unsqueeze(1)  # [C, 1, k, k]


class _DepthwiseConvFFTGrad(torch.autograd.Function):
    """A depthwise conv whose weight gradient is computed by FFT (`depthwise_weight_grad_fft`):
    the direct weight gradient of a large depthwise kernel runs at a few GFLOP/s on CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F_.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        k, C = weight.shape[-1], weight.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=k // 2, groups=C)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad_fft(x, grad, k)
        return grad_x, grad_w


def fuse_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN into the bias-free conv before it: (weight, bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class LargeKernelConv(nn.Module):
    """Depthwise k×k conv-BN with a parallel small depthwise conv-BN, summed (RepLKNet)."""

    def __init__(self,
                 channels: int,
                 kernel: int = 31,       # large depthwise kernel k
                 small_kernel: int = 5,  # parallel kernel; clipped to k; equal to k = no branch
                 weight_grad: str = "auto"):  # k×k weight gradient: fft | direct | auto (fft on CPU for k ≥ 13)
        super().__init__()
        if weight_grad not in ("auto", "fft", "direct"):
            raise ValueError(f"weight_grad={weight_grad!r}: expected auto, fft or direct")
        self.kernel = kernel
        self.weight_grad = weight_grad
        self.small_kernel = min(small_kernel, kernel)
        self.lk = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        self.lk_bn = nn.BatchNorm2d(channels)
        if self.small_kernel < kernel:
            self.small = nn.Conv2d(channels, channels, self.small_kernel, padding=self.small_kernel // 2,
                                   groups=channels, bias=False)
            self.small_bn = nn.BatchNorm2d(channels)
        self.fused = None  # set by reparameterize(): one depthwise k×k conv with bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last, as the trainer runs the networks (docs/detector.md §4.6): the depthwise
        # convs are several times faster on CPU in NHWC than in NCHW
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        if self.fused is not None:
            return self.fused(x_nhwc)
        out = self.lk_bn(self._large(x_nhwc))
        if hasattr(self, "small"):
            out = out + self.small_bn(self.small(x_nhwc))
        return out

    def _large(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        fft = self.weight_grad == "fft" or (self.weight_grad == "auto" and x_nhwc.device.type == "cpu"
                                            and self.kernel >= FFT_MIN_KERNEL)
        if fft and torch.is_grad_enabled() and self.lk.weight.requires_grad:
            return _DepthwiseConvFFTGrad.apply(x_nhwc, self.lk.weight)
        return self.lk(x_nhwc)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Inference-time fusion: fold both BNs, zero-pad the small kernel to k×k, add."""
        weight, bias = fuse_bn(self.lk, self.lk_bn)
        if hasattr(self, "small"):
            w_small, b_small = fuse_bn(self.small, self.small_bn)
            pad = (self.kernel - self.small_kernel) // 2
            weight = weight + F_.pad(w_small, [pad] * 4)
            bias = bias + b_small
        channels = weight.shape[0]
        self.fused = nn.Conv2d(channels, channels, self.kernel, padding=self.kernel // 2, groups=channels,
                               bias=True).to(weight.device)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        for name in ("lk", "lk_bn", "small", "small_bn"):
            if hasattr(self, name):
                delattr(self, name)


class RepLKBlock(nn.Module):
    """RepLKNet block: BN, 1×1 conv-BN-ReLU, large-kernel conv, ReLU, 1×1 conv-BN, residual."""

    def __init__(self, channels: int, kernel: int, small_kernel: int, weight_grad: str = "auto"):
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(channels)
        self.pw1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True))
        self.large_kernel = LargeKernelConv(channels, kernel, small_kernel, weight_grad)
        self.pw2 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw1(self.pre_bn(x))
        out = self.pw2(F_.relu(self.large_kernel(out)))
        return x + out


class ConvFFN(nn.Module):
    """RepLKNet ConvFFN: BN, 1×1 conv C→4C-BN, GELU, 1×1 conv 4C→C-BN, residual."""

    def __init__(self, channels: int, expansion: int = 4):
        super().__init__()
        hidden = channels * expansion
        self.pre_bn = nn.BatchNorm2d(channels)
        self.pw1 = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.pw2 = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F_.gelu(self.pw1(self.pre_bn(x))))


class LargeKernelUnit(nn.Sequential):
    """LKU (docs/detector.md §4.3): a RepLK block followed by a ConvFFN, appended to a D encoder stage."""

    def __init__(self, channels: int, kernel: int, small_kernel: int = 5, weight_grad: str = "auto"):
        super().__init__()
        self.replk = RepLKBlock(channels, kernel, small_kernel, weight_grad)
        self.ffn = ConvFFN(channels)


# ---------------------------------------------------------------- D: defect prediction network

class DefectPredictor(nn.Module):
    """D (paper §3.3): DRAEM's discriminative U-Net; `lk_kernels` adds LKUs to e3..e6."""

    def __init__(self,
                 base: int = 64,                                   # width of e1; DRAEM uses 64
                 lk_kernels: tuple[int, ...] | None = (31, 29, 27, 13),  # k at e3..e6; None = DRAEM's D
                 lk_small_kernel: int = 5,                         # RepLKNet's parallel kernel
                 lk_weight_grad: str = "auto",                     # LargeKernelConv's weight_grad
                 in_channels: int = 6):                            # cat(I_r, I_a)
        super().__init__()
        widths = tuple(base * m for m in D_MULTIPLIERS)
        self.widths = widths
        self.lk_stages = ()
        if lk_kernels:
            first = len(widths) - len(lk_kernels) + 1
            self.lk_stages = tuple(range(first, len(widths) + 1))
        c_in = in_channels
        for stage, width in enumerate(widths, start=1):
            self.add_module(f"e{stage}", ConvBlock(c_in, width))
            c_in = width
        self.pool = nn.MaxPool2d(2)
        for stage, kernel in zip(self.lk_stages, lk_kernels or ()):
            self.add_module(f"e{stage}_lk", LargeKernelUnit(widths[stage - 1], kernel, lk_small_kernel,
                                                                     lk_weight_grad))
        # Decoder stage s upsamples to the width of the level below its skip e_{6-s} (64 at the
        # top), concatenates that skip, then two convs: DRAEM's widths, e.g. up1 512→512 and
        # db1 (512+512)→512, up2 512→256 and db2 (256+512)→256.
        c_in = widths[-1]
        for stage in range(1, len(widths)):
            skip = widths[-1 - stage]
            width = widths[max(len(widths) - 2 - stage, 0)]
            self.add_module(f"up{stage}", UpBlock(c_in, width))
            self.add_module(f"db{stage}", ConvBlock(width + skip, width))
            c_in = width
        self.out = nn.Conv2d(widths[0], 2, 3, padding=1)
        for name, module in self.named_children():
            if not name.endswith("_lk"):  # LKUs keep PyTorch's default init (docs/detector.md §4.3)
                module.apply(draem_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        check_shape("D input", x, (None, 6, None, None))
        depth = len(self.widths)
        if H % 2 ** (depth - 1) or W % 2 ** (depth - 1):
            raise ValueError(f"D input: got {H}x{W}, expected a size divisible by {2 ** (depth - 1)}")
        skips = []
        for stage in range(1, depth + 1):
            x = getattr(self, f"e{stage}")(x if stage == 1 else self.pool(x))
            if stage in self.lk_stages:
                x = getattr(self, f"e{stage}_lk")(x)
            skips.append(x)  # e_s: [N, widths[s-1], H/2^(s-1), W/2^(s-1)]
        x = skips[-1]
        for stage in range(1, depth):
            x = getattr(self, f"up{stage}")(x)
            x = getattr(self, f"db{stage}")(torch.cat([x, skips[-1 - stage]], dim=1))
        return self.out(x)  # logits: [N, 2, H, W]; softmax channel 1 = anomaly probability

    def reparameterize(self) -> "DefectPredictor":
        """Fuse every large-kernel conv for inference (eval mode only); returns self."""
        assert not self.training, "re-parameterise in eval mode: BN must use running statistics"
        for module in self.modules():
            if isinstance(module, LargeKernelConv) and module.fused is None:
                module.reparameterize()
        return self

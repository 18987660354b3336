"""DFMGAN's networks (Duan et al., AAAI 2023) on a StyleGAN2 backbone (docs/dfmgan.md §2-3).

Generator: a mapping network z -> W+, a skip-ToRGB synthesis network b4..bR; with `res_st`
set (stage 2) also the defect mapping z_defect -> W_defect+, defect-aware residual blocks
`res_b{r}` at the top three resolutions, a ToMask head on the first of them, the mask
upsampled with the FIR filter and a hard gate 1[M >= threshold] on the residual features
(paper §3.2, Fig. 2). Discriminator: StyleGAN2's resnet D with minibatch-stddev; DFMGAN's
D_match is the same class with 4 input channels (image ⊕ mask) and fewer channels.
Pure modules: no I/O, no randomness beyond per-layer noise.
"""

import math

import torch
import torch.nn as nn

from trainables.gan.layers import (Conv2dLayer, FullyConnected, ModulatedConv, ToImage, check_shape,
                                   fir_filter, upsample2d)


def channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at one resolution: min(base / res, max) (docs/dfmgan.md §2.4)."""
    return min(channel_base // resolution, channel_max)


# ---------------------------------------------------------------- generator

class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalisation, lrelu FC layers with lr multiplier, broadcast to W+ (docs/dfmgan.md §2.3)."""

    def __init__(self,
                 z_dim: int,
                 w_dim: int,
                 num_ws: int,                  # length of W+
                 num_layers: int = 2,          # 2 under StyleGAN2-ADA's 'auto' config (not 8)
                 lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995):   # tracking of w_avg, used only for truncation
        super().__init__()
        self.num_ws, self.w_avg_beta = num_ws, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.fcs = nn.ModuleList(FullyConnected(a, b, "lrelu", lr_mul) for a, b in zip(dims[:-1], dims[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        N, Z = z.shape
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for fc in self.fcs:
            x = fc(x)
        if self.training:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x[:, None].repeat(1, self.num_ws, 1)                     # [N, num_ws, w_dim]


class SynthesisBlock(nn.Module):
    """One resolution: learned constant (4×4) or conv0 ×2, then conv1; plus a ToRGB / ToMask head."""

    def __init__(self,
                 in_channels: int,             # 0 = the 4×4 block, which starts from a constant
                 out_channels: int,
                 w_dim: int,
                 resolution: int,
                 head_channels: int | None):   # 3 = ToRGB, 1 = ToMask, None = no head
        super().__init__()
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = ModulatedConv(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = ModulatedConv(out_channels, out_channels, w_dim, resolution)
        self.num_conv = 1 if in_channels == 0 else 2
        self.head = ToImage(out_channels, head_channels, w_dim) if head_channels else None

    def features(self, x: torch.Tensor | None, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
        """Block features from the previous block's x and this block's conv styles ws [N, num_conv, w_dim]."""
        check_shape("block ws", ws, (None, self.num_conv, None))
        if self.num_conv == 1:
            x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
        return self.conv1(x, ws[:, self.num_conv - 1], noise_mode)


class SynthesisNetwork(nn.Module):
    """W+ (and W_defect+) -> image [N, 3, R, R] and raw mask [N, 1, R, R] (None without defects)."""

    def __init__(self,
                 w_dim: int,
                 img_resolution: int,
                 img_channels: int = 3,
                 channel_base: int = 16384,    # channels(res) = min(base / res, max)
                 channel_max: int = 512,
                 res_st: int | None = None,    # first residual-block resolution (R/4); None = stage 1
                 mask_threshold: float = 0.0): # gate opens where the raw mask >= threshold
        super().__init__()
        log2 = int(math.log2(img_resolution))
        assert img_resolution == 2 ** log2 and img_resolution >= 8, img_resolution
        self.resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.img_resolution, self.res_st, self.mask_threshold = img_resolution, res_st, mask_threshold
        ch = {r: channels(r, channel_base, channel_max) for r in self.resolutions}
        for r in self.resolutions:
            setattr(self, f"b{r}", SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels))
        self.res_resolutions = [r for r in self.resolutions if res_st is not None and r >= res_st]
        assert res_st is None or res_st in self.resolutions[1:], f"res_st={res_st} not in {self.resolutions[1:]}"
        for r in self.res_resolutions:
            setattr(self, f"res_b{r}", SynthesisBlock(ch[r // 2], ch[r], w_dim, r, 1 if r == res_st else None))
        # StyleGAN2's count: one w per conv plus one for the last ToRGB (14 at 256); each block's
        # ToRGB reads the index after its convs, which the next block's conv0 also reads
        self.num_ws = sum(getattr(self, f"b{r}").num_conv for r in self.resolutions) + 1
        # reference bookkeeping: 2 convs per residual block + the ToMask slot; the last one is unused
        self.num_defect_ws = 2 * len(self.res_resolutions) + 1 if self.res_resolutions else 0
        self.register_buffer("fir", fir_filter(), persistent=False)

    def forward(self, ws: torch.Tensor, ws_defect: torch.Tensor | None = None,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor | None]:
        N, num_ws, w_dim = ws.shape
        check_shape("ws", ws, (None, self.num_ws, None))
        if ws_defect is not None:
            check_shape("ws_defect", ws_defect, (N, self.num_defect_ws, w_dim))
        x = img = mask = None
        w_idx = d_idx = 0
        for r in self.resolutions:
            block = getattr(self, f"b{r}")
            w = ws[:, w_idx:w_idx + block.num_conv]                     # the convs' styles
            w_head = ws[:, w_idx + block.num_conv]                       # ToRGB: the next index
            if ws_defect is not None and r >= self.res_st:
                res_block = getattr(self, f"res_b{r}")
                wd = ws_defect[:, d_idx:d_idx + res_block.num_conv]      # the same bookkeeping on W_defect+
                R = res_block.features(x, wd, noise_mode)                # [N, C, r, r]
                if r == self.res_st:
                    mask = res_block.head(R, ws_defect[:, d_idx + res_block.num_conv])  # raw mask [N, 1, r, r]
                else:
                    mask = upsample2d(mask, self.fir)                    # interior = bilinear ×2
                S = block.features(x, w, noise_mode)
                # hard gate (paper §3.2): no gradient reaches the mask through the image
                x = S + R * (mask >= self.mask_threshold).to(R.dtype)
                d_idx += res_block.num_conv
            else:
                x = block.features(x, w, noise_mode)
            y = block.head(x, w_head)
            img = y if img is None else upsample2d(img, self.fir) + y    # skip architecture
            w_idx += block.num_conv
        return img, mask                                                 # [N, 3, R, R], [N, 1, R, R] | None


class Generator(nn.Module):
    """G(z, z_defect) -> (image, raw mask); z_defect None cuts the defect branch off (stage 1 / twin)."""

    def __init__(self,
                 z_dim: int = 512,
                 w_dim: int = 512,
                 img_resolution: int = 256,
                 img_channels: int = 3,
                 channel_base: int = 16384,
                 channel_max: int = 512,
                 mapping_layers: int = 2,
                 mapping_lr_mul: float = 0.01,
                 res_st: int | None = None,    # None = stage 1 (no defect branch)
                 mask_threshold: float = 0.0):
        super().__init__()
        self.z_dim = z_dim
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max,
                                          res_st, mask_threshold)
        self.mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_ws, mapping_layers, mapping_lr_mul)
        if res_st is not None:
            self.defect_mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_defect_ws, mapping_layers,
                                                 mapping_lr_mul)

    @property
    def has_defects(self) -> bool:
        return self.synthesis.res_st is not None

    def forward(self, z: torch.Tensor, z_defect: torch.Tensor | None = None, truncation_psi: float = 1.0,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor | None]:
        ws = self.mapping(z)
        ws_defect = None if z_defect is None else self.defect_mapping(z_defect, truncation_psi)  # ψ: defects only
        return self.synthesis(ws, ws_defect, noise_mode)

    def defect_modules(self) -> list[nn.Module]:
        """What stage 2 trains: the defect mapping and the residual blocks (ToMask included)."""
        s = self.synthesis
        return [self.defect_mapping] + [getattr(s, f"res_b{r}") for r in s.res_resolutions]

    def defect_margin(self) -> int:
        """Output pixels by which a residual at res_st can spread beyond its (nearest-upsampled)
        gate: per doubling, FIR ×2 upsampling reaches 1 px and two 3×3 convs 2 px: m -> 2m + 3."""
        m = 0
        for _ in self.synthesis.res_resolutions[1:]:
            m = 2 * m + 3
        return m


# ---------------------------------------------------------------- discriminators

class DiscriminatorBlock(nn.Module):
    """Resnet D block: conv0 3×3, conv1 3×3 ×½, 1×1 skip ×½; output √½ (skip + conv1) (docs/dfmgan.md §2.5)."""

    def __init__(self,
                 tmp_channels: int,
                 out_channels: int,
                 img_channels: int = 0):       # > 0: the top block, which starts with fromRGB
        super().__init__()
        self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, "lrelu") if img_channels else None
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, "lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, "lrelu", down=True)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        return math.sqrt(0.5) * (self.skip(x) + self.conv1(self.conv0(x)))


def minibatch_std(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append the std over groups of min(group_size, N) samples, averaged over C, H, W. [N, C+F, H, W]"""
    N, C, H, W = x.shape
    G, F = min(group_size, N), num_channels
    assert N % G == 0, f"batch {N} not divisible by the minibatch-stddev group {G}"
    y = x.reshape(G, -1, F, C // F, H, W)                              # sample i is in group i mod N/G
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()              # [N/G, F, C/F, H, W]
    y = y.mean([2, 3, 4]).reshape(-1, F, 1, 1).repeat(G, 1, H, W)      # [N, F, H, W]
    return torch.cat([x, y], 1)


class DiscriminatorEpilogue(nn.Module):
    """4×4: minibatch-stddev, conv 3×3, FC, FC -> one logit."""

    def __init__(self, in_channels: int, mbstd_group: int = 4):
        super().__init__()
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, "lrelu")
        self.fc = FullyConnected(in_channels * 16, in_channels, "lrelu")
        self.out = FullyConnected(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(minibatch_std(x, self.mbstd_group))
        return self.out(self.fc(x.flatten(1)))                          # [N, 1]


class Discriminator(nn.Module):
    """StyleGAN2 resnet D: blocks bR..b8, epilogue b4. D_match = Discriminator(img_channels=4, ...)."""

    def __init__(self,
                 img_resolution: int = 256,
                 img_channels: int = 3,        # 3 = D (RGB); 4 = D_match (RGB ⊕ mask)
                 channel_base: int = 16384,    # 4096 for D_match (docs/dfmgan.md §3.3)
                 channel_max: int = 512,       # 128 for D_match
                 mbstd_group: int = 4):
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.resolutions = [2 ** i for i in range(log2, 2, -1)]
        for r in self.resolutions:
            setattr(self, f"b{r}", DiscriminatorBlock(channels(r, channel_base, channel_max),
                                                      channels(r // 2, channel_base, channel_max),
                                                      img_channels if r == img_resolution else 0))
        self.b4 = DiscriminatorEpilogue(channels(4, channel_base, channel_max), mbstd_group)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        check_shape("D input", img, (None, self.img_channels, self.img_resolution, self.img_resolution))
        x = img
        for r in self.resolutions:
            x = getattr(self, f"b{r}")(x)
        return self.b4(x)                                               # [N, 1] logits

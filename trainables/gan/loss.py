"""Losses of StyleGAN2-ADA (stage 1) and DFMGAN (stage 2), one method per training phase (docs/dfmgan.md §3.4, §3.7).

Phases, in the order a training iteration runs them: `G_main` (non-saturating loss through
ADA; stage 2 adds λ_match·D_match's loss and λ_ms·the mode-seeking loss), `G_reg` (path-length
penalty, every `G_reg_interval`), `D_main`, `D_reg` (R1 on augmented reals, the gradient taken
through ADA, every `D_reg_interval`), and in stage 2 `Dm_main` and `Dm_reg` (D_match on
image ⊕ mask, no ADA). Each method draws its own fresh latents and returns a dict of loss
terms, already multiplied by their weights and lazy-regularisation intervals, whose sum is
what the phase backpropagates. Style mixing applies in every G forward, to W+ and W_defect+
with independent cut-offs.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F_

Terms = dict[str, torch.Tensor]


class DFMGANLoss:
    """Every phase of one training iteration; stage 2 when G has a defect branch and D_match is given."""

    def __init__(self,
                 G: nn.Module,
                 D: nn.Module,
                 augment: nn.Module | None,    # ADA pipeline for everything D sees; None = off
                 D_match: nn.Module | None = None,   # stage 2 only
                 r1_gamma: float = 0.4096,
                 style_mixing: float = 0.9,    # probability of mixing two latents per G forward
                 pl_weight: float = 2.0,       # path-length penalty weight; 0 = off
                 pl_batch_shrink: int = 2,
                 pl_decay: float = 0.01,       # EMA rate of the target length a
                 lambda_match: float = 1.0,    # weight of D_match's term in G's loss
                 lambda_ms: float = 0.1,       # mode-seeking weight λ (paper Eq. 6; the CLI help's 1.0 is wrong)
                 tanh_k: float = 10.0,         # soft mask tanh(k·M) for D_match and the MS loss
                 G_reg_interval: int = 4,
                 D_reg_interval: int = 16):
        self.G, self.D, self.augment, self.D_match = G, D, augment, D_match
        self.r1_gamma, self.style_mixing = r1_gamma, style_mixing
        self.pl_weight, self.pl_batch_shrink, self.pl_decay = pl_weight, pl_batch_shrink, pl_decay
        self.lambda_match, self.lambda_ms, self.tanh_k = lambda_match, lambda_ms, tanh_k
        self.G_reg_interval, self.D_reg_interval = G_reg_interval, D_reg_interval
        self.pl_mean = torch.zeros([])
        self.stage2 = G.has_defects and D_match is not None

    # ------------------------------------------------------------ forwards

    def _mix(self, mapping: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """W+ of z, with the entries from a random cut-off on taken from a second latent (prob. style_mixing)."""
        ws = mapping(z)
        if self.style_mixing > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, []))
            if float(torch.rand([])) >= self.style_mixing:
                cutoff = num_ws
            if cutoff < num_ws:
                ws = torch.cat([ws[:, :cutoff], mapping(torch.randn_like(z))[:, cutoff:]], 1)
        return ws

    def run_G(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Fresh z (and z_defect) -> image, raw mask, W+, W_defect+ (the last two for PL and MS)."""
        z = torch.randn(n, self.G.z_dim, device=device)
        ws = self._mix(self.G.mapping, z)
        ws_defect = self._mix(self.G.defect_mapping, torch.randn(n, self.G.z_dim, device=device)) if self.stage2 else None
        img, mask = self.G.synthesis(ws, ws_defect)
        return img, mask, ws, ws_defect

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment(img) if self.augment is not None else img)

    def _match_input(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """D_match's input: the image ⊕ the soft mask tanh(k·M). [N, 4, H, W]"""
        return torch.cat([img, torch.tanh(self.tanh_k * mask)], 1)

    # ------------------------------------------------------------ phases

    def G_main(self, n: int, device) -> Terms:
        img, mask, ws, ws_defect = self.run_G(n, device)
        terms = {"G": F_.softplus(-self.run_D(img)).mean()}
        if self.stage2 and self.lambda_match > 0:
            terms["G_match"] = self.lambda_match * F_.softplus(-self.D_match(self._match_input(img, mask))).mean()
        if self.stage2 and self.lambda_ms > 0:
            terms["ms"] = self.lambda_ms * self.mode_seeking(mask, ws, ws_defect)
        return terms

    def mode_seeking(self, mask: torch.Tensor, ws: torch.Tensor, ws_defect: torch.Tensor) -> torch.Tensor:
        """L_ms = mean|w_d1 - w_d2| / mean|M1 - M2| (docs/dfmgan.md §3.5, 'w/mask'): the first half's object code
        rendered with the second half's defect code; the numerator keeps its gradient, as in the
        reference. The 1e-5 keeps identical masks from dividing by zero."""
        half = ws.shape[0] // 2
        assert half > 0 and ws.shape[0] % 2 == 0, "mode seeking needs an even batch"
        _, mask_swapped = self.G.synthesis(ws[:half], ws_defect[half:])
        M1, M2 = torch.tanh(self.tanh_k * mask[:half]), torch.tanh(self.tanh_k * mask_swapped)
        return (ws_defect[:half] - ws_defect[half:]).abs().mean() / ((M1 - M2).abs().mean() + 1e-5)

    def G_reg(self, n: int, device) -> Terms:
        """Path-length penalty w.r.t. the backbone W+ only (stage 2 too), on n / pl_batch_shrink samples."""
        if self.pl_weight == 0:
            return {}
        n = max(n // self.pl_batch_shrink, 1)
        z = torch.randn(n, self.G.z_dim, device=device)
        ws = self._mix(self.G.mapping, z)
        if not ws.requires_grad:               # stage 2: the mapping is frozen; PL still needs ∂/∂W+
            ws.requires_grad_(True)
        ws_defect = self._mix(self.G.defect_mapping, torch.randn_like(z)) if self.stage2 else None
        img, _ = self.G.synthesis(ws, ws_defect)
        N, C, H, W = img.shape
        y = torch.randn_like(img) / math.sqrt(H * W)
        g, = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
        lengths = g.square().sum(2).mean(1).sqrt()                       # [n]
        self.pl_mean = self.pl_mean.to(device).lerp(lengths.mean().detach(), self.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        return {"pl": penalty * self.pl_weight * self.G_reg_interval}

    def D_main(self, real: torch.Tensor, stats: dict | None = None) -> Terms:
        """Fake and real logistic terms; adds E[sign D(x_real)] material to `stats` for ADA."""
        with torch.no_grad():
            img, _, _, _ = self.run_G(real.shape[0], real.device)
        real_logits = self.run_D(real)
        if stats is not None:
            stats["sign_sum"] = stats.get("sign_sum", 0.0) + float(real_logits.detach().sign().sum())
            stats["count"] = stats.get("count", 0) + real_logits.numel()
        return {"D_fake": F_.softplus(self.run_D(img)).mean(), "D_real": F_.softplus(-real_logits).mean()}

    def _r1(self, net, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        g, = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        return g.square().sum([1, 2, 3]).mean() * (self.r1_gamma / 2) * self.D_reg_interval

    def D_reg(self, real: torch.Tensor) -> Terms:
        """R1 on augmented reals, differentiated w.r.t. the un-augmented input (through ADA)."""
        return {"r1": self._r1(self.run_D, real)} if self.r1_gamma > 0 else {}

    def Dm_main(self, real: torch.Tensor, real_mask: torch.Tensor) -> Terms:
        """D_match: fake image ⊕ tanh(k·M) vs real image ⊕ mask in {-1, +1}; no ADA."""
        with torch.no_grad():
            img, mask, _, _ = self.run_G(real.shape[0], real.device)
        fake_logits = self.D_match(self._match_input(img, mask))
        real_logits = self.D_match(torch.cat([real, real_mask], 1))
        return {"Dm_fake": F_.softplus(fake_logits).mean(), "Dm_real": F_.softplus(-real_logits).mean()}

    def Dm_reg(self, real: torch.Tensor, real_mask: torch.Tensor) -> Terms:
        """R1 of D_match over all 4 input channels."""
        if self.r1_gamma == 0:
            return {}
        return {"Dm_r1": self._r1(self.D_match, torch.cat([real, real_mask], 1))}

"""Training loops of DFMGAN (Duan et al., AAAI 2023): config, presets, stage 1 and stage 2.

`train_gan_stage1(cfg, report)` trains a StyleGAN2-ADA on a category's defect-free training
images. `train_gan_stage2(cfg, report)` loads that checkpoint (`cfg.stage1`), freezes the
backbone generator and trains the defect mapping, the residual blocks with ToMask, the whole
D and a new D_match on one defect type's images and masks, then generates triplets and
computes the metrics. One iteration runs the phases G_main, G_reg (every 4th), D_main, D_reg
(every 16th), and in stage 2 Dm_main, Dm_reg (every 16th), then the EMA of G and, every 4th,
ADA's p update (docs/dfmgan.md §3.7). Every iteration seeds torch from (seed, rank, iteration), and a
checkpoint holds G, G_ema, D, D_match, every optimiser, ADA p and its pending statistics, the
path-length mean, the counters and the RNG: running the same config with `resume` set
continues bit for bit (the reference loses the optimisers, ADA p and D_match on resume,
DFMGAN issue #19). Runs stop at `stage{1,2}_kimg` or after `stage{1,2}_minutes` of training
(every rank stops together); a checkpoint goes with the first tick report `checkpoint_minutes`
after the last one, and with the final report.
Plain Python with world size 1; with torch.distributed initialised, each rank draws its own
batch share and gradients are averaged across ranks (as the reference does, instead of DDP,
whose reducer does not cover the double-backward regularisers). Only rank 0 evaluates.
"""

import copy
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from trainables.checkpoint import load_checkpoint, rng_state, set_rng_state
from trainables.config import to_flat
from trainables.data.split import stage2_indices
from trainables.device import pick_device
from trainables.errors import UserInputError
from trainables.gan.augment import AugmentPipe, ada_adjust
from trainables.gan.config import GanConfig
from trainables.gan.generate import TRIPLETS, generate_triplets, mask_statistics, to_uint8, triplet_pictures
from trainables.gan.loss import DFMGANLoss
from trainables.gan.metrics import compute_clustered_lpips, compute_kid
from trainables.gan.networks import Discriminator, Generator
from trainables.pictures import grid
from trainables.runtime import Interval, agree, load_category_or_fail, rank_world, snapshot

Report = Callable[..., None]
# fields that shape the networks: stage 2 must be built exactly like its stage 1 (docs/dfmgan.md §2.1, §3.6)
ARCHITECTURE = ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group")


# ---------------------------------------------------------------- building blocks

def build_networks(cfg: GanConfig, stage: int) -> tuple[Generator, Discriminator, Discriminator | None]:
    """G (with the defect branch in stage 2), D and (stage 2) D_match, from torch's current RNG."""
    res_st = (cfg.res_st or cfg.resolution // 4) if stage == 2 else None
    G = Generator(cfg.z_dim, cfg.w_dim, cfg.resolution, 3, cfg.channel_base, cfg.channel_max, cfg.mapping_layers,
                  res_st=res_st, mask_threshold=cfg.mask_threshold)
    D = Discriminator(cfg.resolution, 3, cfg.channel_base, cfg.channel_max, cfg.mbstd_group)
    D_match = Discriminator(cfg.resolution, 4, cfg.dmatch_channel_base, cfg.dmatch_channel_max,
                            cfg.mbstd_group) if stage == 2 else None
    return G, D, D_match


def adam(params, lr: float, reg_interval: int) -> torch.optim.Adam:
    """Adam(β1 = 0, β2 = 0.99) with lr and β2 rescaled for lazy regularisation: c = I / (I + 1)."""
    c = reg_interval / (reg_interval + 1)
    return torch.optim.Adam(params, lr=lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)


def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def load_stage1(cfg: GanConfig) -> dict:
    """The stage-1 checkpoint, checked to be a stage-1 run with the same architecture as `cfg`."""
    if not cfg.stage1:
        raise UserInputError("stage1: stage 2 needs the stage-1 checkpoint folder (stage1=PATH)")
    try:
        state = load_checkpoint(cfg.stage1)
    except FileNotFoundError:
        raise UserInputError(f"stage1={cfg.stage1}: no checkpoint.pt there") from None
    if state.get("stage") != 1:
        raise UserInputError(f"stage1={cfg.stage1}: not a stage-1 checkpoint (stage={state.get('stage')})")
    if not state.get("final"):
        raise UserInputError(f"stage1={cfg.stage1}: stage 1 did not finish (an intermediate checkpoint); "
                             f"finish stage 1 first")
    mismatch = {k: (state["config"][k], getattr(cfg, k)) for k in ARCHITECTURE if state["config"][k] != getattr(cfg, k)}
    if mismatch:
        raise UserInputError(f"stage1={cfg.stage1}: architecture differs from this config (stage 1, stage 2): "
                             f"{mismatch}; build stage 2 with stage 1's preset and settings")
    return state


def load_backbone(G: Generator, state: dict) -> None:
    """A stage-1 G state into a stage-2 G: every backbone tensor; only the defect branch is missing."""
    missing, unexpected = G.load_state_dict(state, strict=False)
    new = ("defect_mapping.", "synthesis.res_b")
    assert not unexpected and all(k.startswith(new) for k in missing), (unexpected, missing)


def sanitise_and_sync(params: list[torch.nn.Parameter], world_size: int) -> None:
    """nan_to_num every gradient (NaN -> 0, ±inf -> ±1e5) and average them over ranks."""
    if world_size > 1:                     # every rank reduces the same list: missing grads count as zeros
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    if world_size > 1 and grads:
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    for g in grads:
        torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)


@torch.no_grad()
def update_ema(G_ema: Generator, G: Generator, beta: float) -> None:
    """p_ema <- p + β (p_ema − p) for every parameter (frozen ones too, as the reference); buffers copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def to_model_range(images: np.ndarray, device) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1] (masks {0,1} -> {-1, +1})."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x[..., None] * 255 if x.dim() == 3 else x
    return (x.permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)


def load_images(cfg: GanConfig, stage: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Stage 1: train/good images; stage 2: the defect type's images and masks (uint8)."""
    _, data = load_category_or_fail(cfg.data, cfg.category, cfg.resolution)
    if stage == 1:
        return data.train, None
    if not cfg.defect:
        raise UserInputError(f"defect: stage 2 needs a defect type of {cfg.category}: {list(data.defect_types)}")
    images, masks = data.defects(cfg.defect)  # checks the type exists
    if cfg.holdout_seed is None:
        return images, masks
    # the base third only: the joined ablation grid evaluates its detectors on the rest
    base = stage2_indices(data.test_types, cfg.defect, cfg.holdout_seed, cfg.base_fraction)
    return data.test[base], data.test_masks[base]


# ---------------------------------------------------------------- the loop

def train_gan_stage1(cfg: GanConfig, report: Report) -> dict:
    """StyleGAN2-ADA on `cfg.category`'s defect-free training images; returns the final metrics."""
    images, _ = load_images(cfg, 1)
    return run(cfg, 1, report, images)[0]


def train_gan_stage2(cfg: GanConfig, report: Report) -> dict:
    """DFMGAN's defect-aware transfer on `cfg.defect` of `cfg.category`; returns the final metrics."""
    images, masks = load_images(cfg, 2)
    return run(cfg, 2, report, images, masks)[0]


def run(cfg: GanConfig, stage: int, report: Report, images: np.ndarray, masks: np.ndarray | None = None,
        evaluate: bool = True) -> tuple[dict, Generator]:
    """Train one stage on uint8 images [K, R, R, 3] (and masks [K, R, R]); (final metrics, G_ema)."""
    assert (masks is not None) == (stage == 2)
    device = pick_device(cfg.device)
    rank, world_size = rank_world()
    cfg.check_world(world_size)
    n_batch = cfg.batch // world_size
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None and resume.get("stage") != stage:
        raise UserInputError(f"resume={cfg.resume}: a stage-{resume.get('stage')} checkpoint, not stage {stage}")
    torch.manual_seed(cfg.seed)
    G, D, D_match = build_networks(cfg, stage)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if stage == 2 and resume is None:
        # the reference copies stage 1's G into G, its G_ema into G_ema and its D into D (docs/dfmgan.md §3.6)
        stage1 = load_stage1(cfg)
        load_backbone(G, stage1["G"])
        load_backbone(G_ema, stage1["G_ema"])
        D.load_state_dict(stage1["D"])
    if stage == 2:
        G.requires_grad_(False)
        for module in G.defect_modules():
            module.requires_grad_(True)
    G_params = [p for p in G.parameters() if p.requires_grad]
    for net in (G, G_ema, D, D_match):
        if net is not None:
            net.to(device)
    opt_G = adam(G_params, cfg.lr, cfg.G_reg_interval)
    opt_D = adam(D.parameters(), cfg.lr, cfg.D_reg_interval)
    opt_Dm = adam(D_match.parameters(), cfg.lr, cfg.D_reg_interval) if D_match is not None else None
    augment = AugmentPipe().to(device) if cfg.augment else None
    loss = DFMGANLoss(G, D, augment, D_match, r1_gamma=cfg.gamma, style_mixing=cfg.style_mixing,
                      pl_weight=cfg.pl_weight, pl_batch_shrink=cfg.pl_batch_shrink, pl_decay=cfg.pl_decay,
                      lambda_match=cfg.lambda_match, lambda_ms=cfg.lambda_ms, tanh_k=cfg.tanh_k,
                      G_reg_interval=cfg.G_reg_interval, D_reg_interval=cfg.D_reg_interval)
    state = {"cur_nimg": 0, "iteration": 0, "ada_p": cfg.augment_p, "ada_sign_sum": 0.0, "ada_count": 0,
             "train_seconds": 0.0}
    if resume is not None:
        for name, net in (("G", G), ("G_ema", G_ema), ("D", D), ("D_match", D_match)):
            if net is not None:
                net.load_state_dict(resume[name])
        for name, opt in (("opt_G", opt_G), ("opt_D", opt_D), ("opt_Dm", opt_Dm)):
            if opt is not None:
                opt.load_state_dict(resume[name])
        loss.pl_mean = resume["pl_mean"].to(device)
        state.update({k: resume[k] for k in state})
        set_rng_state(resume["rng"])

    reals = to_model_range(images, device)
    real_masks = to_model_range(masks, device) if masks is not None else None
    kimg = cfg.stage1_kimg if stage == 1 else cfg.stage2_kimg
    minutes = cfg.stage1_minutes if stage == 1 else cfg.stage2_minutes
    ada_kimg = cfg.ada_kimg if stage == 1 else cfg.ada_kimg_stage2
    tick_nimg = max(int(cfg.tick_kimg * 1000), 1)

    def finished() -> bool:
        """A collective under DDP: the image count is the same on every rank, their clocks are not."""
        spent = minutes is not None and state["train_seconds"] >= minutes * 60
        return state["cur_nimg"] >= kimg * 1000 or agree(spent, device)

    def checkpoint(final: bool) -> dict:
        ckpt = {"stage": stage, "config": to_flat(cfg), "final": int(final), "G": G.state_dict(),
                "G_ema": G_ema.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                "opt_D": opt_D.state_dict(), "pl_mean": loss.pl_mean, "rng": rng_state(), **state}
        if D_match is not None:
            ckpt.update(D_match=D_match.state_dict(), opt_Dm=opt_Dm.state_dict())
        return snapshot(ckpt)  # a CPU copy: report may write it while training goes on

    def phase(opt, params, terms: dict) -> None:
        opt.zero_grad(set_to_none=True)
        if not terms:
            return
        sum(terms.values()).backward()
        sanitise_and_sync(params, world_size)
        opt.step()
        for name, value in terms.items():
            sums[name] += float(value.detach())
            counts[name] += 1

    sums, counts = defaultdict(float), defaultdict(int)
    tick_began, tick_iterations = time.perf_counter(), 0
    checkpoint_due = Interval(cfg.checkpoint_minutes, device)
    began = time.perf_counter() - state["train_seconds"]
    done = finished()
    while not done:
        it = state["iteration"]
        torch.manual_seed(step_seed(cfg.seed, rank, it))
        index = torch.randint(len(reals), (n_batch,)).to(device)
        real = reals[index]
        real_mask = real_masks[index] if real_masks is not None else None
        if augment is not None:
            augment.p = state["ada_p"]
        D_nets = [D] + ([D_match] if D_match is not None else [])
        for net in D_nets:
            net.requires_grad_(False)
        phase(opt_G, G_params, loss.G_main(n_batch, device))
        if it % cfg.G_reg_interval == 0:
            phase(opt_G, G_params, loss.G_reg(n_batch, device))
        for net in D_nets:
            net.requires_grad_(True)
        stats = {}
        phase(opt_D, list(D.parameters()), loss.D_main(real, stats))
        if it % cfg.D_reg_interval == 0:
            phase(opt_D, list(D.parameters()), loss.D_reg(real))
        if D_match is not None:
            phase(opt_Dm, list(D_match.parameters()), loss.Dm_main(real, real_mask))
            if it % cfg.D_reg_interval == 0:
                phase(opt_Dm, list(D_match.parameters()), loss.Dm_reg(real, real_mask))
        ema_nimg = cfg.ema_half_life_kimg * 1000
        if stage == 1 and cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, state["cur_nimg"] * cfg.ema_rampup)
        update_ema(G_ema, G, 0.5 ** (cfg.batch / max(ema_nimg, 1e-8)))
        state["iteration"] += 1
        state["cur_nimg"] += cfg.batch
        state["ada_sign_sum"] += stats["sign_sum"]
        state["ada_count"] += stats["count"]
        if augment is not None and cfg.ada_target is not None and state["iteration"] % cfg.ada_interval == 0:
            sign_sum = torch.tensor([state["ada_sign_sum"], state["ada_count"]], dtype=torch.float64, device=device)
            if world_size > 1:
                dist.all_reduce(sign_sum)
            state["ada_p"] = ada_adjust(state["ada_p"], float(sign_sum[0] / sign_sum[1]), cfg.ada_target,
                                        cfg.batch * cfg.ada_interval, ada_kimg)
            state["ada_sign_sum"], state["ada_count"] = 0.0, 0
        state["train_seconds"] = time.perf_counter() - began
        tick_iterations += 1
        done = finished()
        if state["cur_nimg"] // tick_nimg != (state["cur_nimg"] - cfg.batch) // tick_nimg and not done:
            save = checkpoint_due.due() and rank == 0  # due() first: a collective on every rank
            report(progress(stage, state, len(reals), sums, counts, tick_iterations / (time.perf_counter() - tick_began)),
                   checkpoint(False) if save else None)
            sums, counts = defaultdict(float), defaultdict(int)
            tick_began, tick_iterations = time.perf_counter(), 0

    metrics = {**progress(stage, state, len(reals), sums, counts, tick_iterations / max(time.perf_counter() - tick_began, 1e-9)),
               "final": 1}
    pictures, triplets = None, None
    if rank == 0 and evaluate:
        extra, pictures, triplets = evaluate_stage(cfg, stage, G_ema, images, device)
        metrics.update(extra)
    final = checkpoint(True) if rank == 0 else None
    if final is not None and pictures:
        final["pictures"] = {stem: torch.from_numpy(np.ascontiguousarray(p)) for stem, p in pictures.items()}
    if final is not None and triplets is not None:
        # the triplet bank the detector's dfmgan source reads (persisted as triplets.npz)
        final[TRIPLETS] = {**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in triplets.items()},
                           "category": cfg.category, "defect": cfg.defect, "lambda_ms": cfg.lambda_ms}
    report(metrics, final)
    return metrics, G_ema


def progress(stage: int, state: dict, n_reals: int, sums: dict, counts: dict, steps_per_s: float) -> dict:
    metrics = {"stage": stage, "kimg": round(state["cur_nimg"] / 1000, 3),
               "epoch": round(state["cur_nimg"] / n_reals, 2), "iteration": state["iteration"],
               "ada_p": round(state["ada_p"], 4), "train_seconds": round(state["train_seconds"], 1),
               "steps_per_s": round(steps_per_s, 3)}
    metrics.update({f"loss/{k}": round(sums[k] / counts[k], 5) for k in sorted(sums)})
    return metrics


def evaluate_stage(cfg: GanConfig, stage: int, G_ema: Generator, images: np.ndarray,
                   device) -> tuple[dict, dict, dict | None]:
    """Final metrics, pictures and (stage 2) the generated triplets: stage 1, a sample grid;
    stage 2, triplets, mask statistics, KID, cLPIPS."""
    if stage == 1:
        gen = torch.Generator().manual_seed(cfg.seed)
        z = torch.randn(cfg.n_pictures, cfg.z_dim, generator=gen).to(device)
        with torch.no_grad():
            fakes = to_uint8(G_ema(z, noise_mode="const")[0])
        return {}, {"stage1_samples": grid(list(fakes), ncols=min(8, len(fakes)))}, None
    triplets = generate_triplets(G_ema, cfg.n_generate, seed=cfg.seed, device=device)
    metrics = mask_statistics(triplets)
    metrics.update(compute_kid(G_ema, images, cfg.kid_gen, device, cfg.seed, cfg.weights_dir))
    metrics.update(compute_clustered_lpips(G_ema, images, cfg.clpips_gen, device, cfg.clpips_cap, cfg.weights_dir))
    metrics["n_triplets"] = len(triplets["image"])
    return metrics, triplet_pictures(triplets, cfg.n_pictures), triplets

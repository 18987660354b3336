"""Training loop of the detector (Peng et al., Sensors 2024): config, presets, train_detector.

`train_detector(cfg, report)` trains R, D (and F in `grad` mode) on synthetic anomalies of
one category, then evaluates the test split (image/pixel AUROC and AP, AUPRO@0.3) and
renders anomaly maps. It talks to the outside only through `report(metrics, checkpoint)`:
once per `report_every` epochs during training, with a checkpoint at the first report
`checkpoint_minutes` after the last one, and once more with the test metrics, the final
checkpoint and `"final": 1`. With `val_fraction` > 0 a share of train/good is held out
(validation.py) and every report carries its `val_*` metrics; the test split is then not
even decoded before the final evaluation, so whatever selects on the reports (HPO) never
sees it. Checkpoints hold every piece of state (nets, F, optimizer, step, training
seconds, RNG), and every batch is drawn from an RNG seeded by (seed, rank, step), so
resuming reproduces an uninterrupted run bit for bit (without a `minutes` budget). The
batches are synthesised in `loader_workers` processes ahead of the step (pipeline.py), or in
line with 0; both give the same batches.

The learning rate is a step function of training progress p ∈ [0, 1] (×lr_gamma at each
`lr_milestones` fraction; the paper's 400/700 and 600/700 epochs by default). p is
step/total_steps, or the spent fraction of the `minutes` budget when that is larger, so a
wall-clock-limited run still decays its learning rate before it stops.
Plain Python with world size 1; DDP (one process per device, sampling sharded by rank) when
torch.distributed is initialised with more than one process. Only rank 0 evaluates.
"""

import contextlib
import copy
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F_

from trainables.checkpoint import load_checkpoint, rng_state, set_rng_state
from trainables.config import to_flat
from trainables.detector.config import DetectorConfig
from trainables.detector.losses import DetectorLoss
from trainables.detector.metrics import detection_metrics
from trainables.detector.pipeline import batches, default_workers
from trainables.detector.model import (DefectPredictor, EncoderFeatures, ReconstructionNet, VGGFeatures,
                                       copy_parameters)
from trainables.data.split import held_back
from trainables.detector.synthesis import (AnomalySynthesizer, SynthesisParams, bank_grid, build_source_pool,
                                           load_triplet_bank)
from trainables.detector.validation import ValidationSet, split_train, validation_set
from trainables.device import pick_device
from trainables.errors import UserInputError
from trainables.runtime import (Interval, agree, load_category_or_fail, rank_world, resolve_category_or_fail,
                                snapshot)

Report = Callable[..., None]
DF_DEFAULT_LAYERS = {"ae_encoder": (3, 4, 5), "vgg19": (1, 2, 3)}  # docs/detector.md §4.2


def synthesis_params(cfg: DetectorConfig) -> SynthesisParams:
    return SynthesisParams(p_anom=cfg.p_anom, opacity_range=tuple(cfg.opacity_range),
                           perlin_scale_max=cfg.perlin_scale_max, perlin_threshold=cfg.perlin_threshold,
                           n_augmenters=cfg.n_augmenters, rot_p=cfg.rot_p, rot_deg=cfg.rot_deg,
                           fg_aware=cfg.fg_aware)


def df_layers(cfg: DetectorConfig) -> tuple[int, ...]:
    return tuple(cfg.df_layers) or DF_DEFAULT_LAYERS[cfg.df_source]


def build_networks(cfg: DetectorConfig, vgg_state: dict | None = None) -> nn.ModuleDict:
    """R, D and (when df is on) F, initialised from torch's current RNG, with their weights
    channels-last like the activations they meet (docs/detector.md §4.6)."""
    nets = nn.ModuleDict({
        "R": ReconstructionNet(cfg.r_base),
        "D": DefectPredictor(cfg.d_base, tuple(cfg.lk_kernels) if cfg.lk else None, cfg.lk_small_kernel,
                             cfg.lk_weight_grad),
    })
    if cfg.df:
        nets["F"] = _feature_extractor(cfg, nets["R"], vgg_state)
    return nets.to(memory_format=torch.channels_last)


def _feature_extractor(cfg: DetectorConfig, R: ReconstructionNet, vgg_state: dict | None) -> nn.Module:
    """F of the deep-feature loss: VGG19 or R's encoder; frozen in copy mode, R's encoder copied in."""
    if cfg.df_source == "vgg19":
        F = VGGFeatures(df_layers(cfg))
        F.features.load_state_dict(vgg_state)
    else:
        F = EncoderFeatures(cfg.r_base, df_layers(cfg))
    if cfg.df_update == "copy":
        F.requires_grad_(False)
        if cfg.df_source == "ae_encoder":
            copy_parameters(R.encoder, F.encoder)
    return F


def build_loss(cfg: DetectorConfig) -> DetectorLoss:
    return DetectorLoss(cfg.w_l2, cfg.w_ssim, cfg.w_df, cfg.w_focal, cfg.ssim_window, cfg.focal_gamma,
                        cfg.df_normalize)


def required_weights(cfg: DetectorConfig) -> list[str]:
    """The pretrained weights (trainables/weights.py names) this config cannot train without:
    VGG19 for df_source=vgg19. The sweep checks every node for them before a trial starts."""
    return ["vgg19"] if cfg.df and cfg.df_source == "vgg19" else []


def load_vgg_state(cfg: DetectorConfig) -> dict | None:
    """VGG19 `features` weights for df_source=vgg19; WeightsUnavailable (a UserInputError) if absent."""
    if "vgg19" not in required_weights(cfg):
        return None
    from trainables.weights import resolve_weights

    state = torch.load(resolve_weights("vgg19", cfg.weights_dir), map_location="cpu", weights_only=True)
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
            and int(k.split(".")[1]) <= max(VGGFeatures.taps_for(df_layers(cfg)))}


def learning_rate(cfg: DetectorConfig, progress: float) -> float:
    return cfg.lr * cfg.lr_gamma ** sum(progress >= m for m in cfg.lr_milestones)


def score_kernel(cfg: DetectorConfig) -> int:
    """The image-score mean filter, scaled from 256 px to img_size, odd."""
    return max(1, round(cfg.score_kernel * cfg.img_size / 256)) // 2 * 2 + 1


# fields whose change makes a checkpoint incompatible with a config
_ARCHITECTURE = ("category", "img_size", "r_base", "d_base", "df", "df_update", "df_source", "df_layers",
                 "lk", "lk_kernels", "lk_small_kernel", "batch_size")


def train_detector(cfg: DetectorConfig, report: Report) -> dict:
    """Train and evaluate one category; returns the final metrics (also reported).

    A checkpoint handed to `report` is a CPU copy of the state (runtime.snapshot): it can be
    kept, or written after `report` returns.
    """
    device = pick_device(cfg.device)
    rank, world = rank_world()
    bank = load_triplet_bank(cfg.dfmgan_banks, cfg.category, cfg.img_size) if cfg.anomaly_source == "dfmgan" \
        else None  # checked first: a dfmgan trial without its banks refuses to start, in one line
    if cfg.val_fraction > 0:  # the test split stays unread until the final evaluation
        from trainables.data import category_kind, load_train

        if bank is not None:
            raise UserInputError("val_fraction: the validation split draws anomalies from an appearance pool; "
                                 "expected anomaly_source mvtec or dtd with val_fraction > 0")
        root, data = resolve_category_or_fail(cfg.data, cfg.category), None
        images, kind = load_train(root.path, cfg.category, cfg.img_size), category_kind(cfg.category)
    else:  # decoded now: a broken test file fails the run before training, not after it
        root, data = load_category_or_fail(cfg.data, cfg.category, cfg.img_size)
        if cfg.eval_holdout_seed is not None:  # the joined grid's test set: no image a stage-2 GAN learnt from
            data = held_back(data, cfg.eval_holdout_seed, cfg.holdout_fraction)
        images, kind = data.train, data.kind
    pool = None if bank is not None else build_source_pool(
        cfg.anomaly_source, root, cfg.category, cfg.img_size, cfg.source_per_category, cfg.dtd_root, cfg.seed)
    kept, held = split_train(len(images), cfg.val_fraction, cfg.val_seed)
    train_images = np.asarray(images)[kept]
    val = validation_set(np.asarray(images), held, kind, pool, synthesis_params(cfg), cfg.val_seed) \
        if len(held) and rank == 0 else None
    synth = AnomalySynthesizer(train_images, kind, pool, synthesis_params(cfg), bank)

    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg, load_vgg_state(cfg)).to(device)
    R, D, F = nets["R"], nets["D"], nets["F"] if cfg.df else None
    trained = [R, D] + ([F] if F is not None and cfg.df_update == "grad" else [])
    optimizer = make_optimizer(cfg, trained)
    loss_fn = build_loss(cfg)

    step, train_seconds = 0, 0.0
    if cfg.resume:
        step, train_seconds = _restore(cfg, nets, optimizer)
    R_t, D_t, F_t = (_ddp(net, device) if world > 1 and net in trained else net for net in (R, D, F))

    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_images) / (cfg.batch_size * world))
    total_steps = cfg.epochs * steps_per_epoch
    budget = cfg.minutes * 60 if cfg.minutes else None
    workers = default_workers(device) if cfg.loader_workers is None else cfg.loader_workers
    info = {"category": cfg.category, "dataset": root.dataset, "anomaly_source": cfg.anomaly_source,
            "leaky": cfg.leaky, "loader_workers": workers, "train_images": len(train_images),
            "val_images": len(held) * 2}
    if cfg.anomaly_source == "dtd":
        info["texture_source"] = pool.origin  # "dtd" or "procedural"
    if cfg.eval_holdout_seed is not None:
        info["n_test"] = len(data.test_types)
    bank_drawn = 0  # DFMGAN triplets among the training samples (dfmgan source), over the whole run
    if bank is not None and cfg.resume:
        bank_drawn = int(load_checkpoint(cfg.resume).get("dfmgan_samples", 0))

    def state(final: bool) -> dict:
        # a CPU copy: the report callable may write it on another thread while training goes on
        return snapshot({"nets": nets.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "train_seconds": train_seconds, "rng": rng_state(), "config": to_flat(cfg),
                         "final": int(final), "dfmgan_samples": bank_drawn})

    set_train_modes(cfg, nets)
    sums: dict[str, float] = {}
    checkpoint_due = Interval(cfg.checkpoint_minutes, device)
    session_start, session_steps = time.perf_counter(), 0
    seconds_before = train_seconds
    # the batch of each step is a function of (seed, rank, step), made in line or by loader processes
    stream = batches(synth, cfg.seed, rank, cfg.batch_size, step, total_steps, workers,
                     pin_memory=device.type == "cuda")
    with contextlib.closing(stream):
        while step < total_steps:
            train_seconds = seconds_before + time.perf_counter() - session_start
            if agree(budget is not None and train_seconds >= budget, device):  # every rank stops together
                break
            progress = max(step / total_steps, train_seconds / budget if budget else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, progress)
            batch = next(stream)
            bank_drawn += int(batch["from_bank"].sum())
            terms = _train_step(cfg, batch, R_t, D_t, F_t, loss_fn, optimizer, device)
            if F is not None and cfg.df_update == "copy" and cfg.df_source == "ae_encoder" \
                    and (step + 1) % cfg.df_copy_every == 0:
                copy_parameters(R.encoder, F.encoder)
            step += 1
            session_steps += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            sums["_n"] = sums.get("_n", 0) + 1
            if step % (steps_per_epoch * cfg.report_every) == 0 and step < total_steps:
                train_seconds = seconds_before + time.perf_counter() - session_start
                metrics = _progress_metrics(cfg, sums, step, steps_per_epoch, world, train_seconds,
                                            session_steps / (time.perf_counter() - session_start), optimizer)
                keep = checkpoint_due.due()  # on every rank (a collective); rank 0 saves
                if val is not None:
                    metrics.update(validate(cfg, R, D, val, device))
                report({**metrics, **info, **({"dfmgan_samples": bank_drawn} if bank is not None else {})},
                       state(False) if keep and rank == 0 else None)
                sums = {}
    train_seconds = seconds_before + time.perf_counter() - session_start
    steps_per_s = session_steps / max(time.perf_counter() - session_start, 1e-9)
    metrics = {**_progress_metrics(cfg, sums, step, steps_per_epoch, world, train_seconds, steps_per_s,
                                   optimizer), **info, "final": 1}
    if bank is not None:
        metrics.update(dfmgan_samples=bank_drawn, dfmgan_lambda=bank.lambda_ms, dfmgan_bank_size=len(bank.image))
    if rank != 0:
        report(metrics, None)
        return metrics
    if val is not None:
        metrics.update(validate(cfg, R, D, val, device))
    eval_start = time.perf_counter()
    if data is None:  # the first time this run opens a test file
        data = load_category_or_fail(cfg.data, cfg.category, cfg.img_size)[1]
        if cfg.eval_holdout_seed is not None:
            data = held_back(data, cfg.eval_holdout_seed, cfg.holdout_fraction)
    results, pictures = evaluate(cfg, R, D, data, device)
    metrics.update(results)
    metrics["eval_seconds"] = round(time.perf_counter() - eval_start, 3)
    if bank is not None:  # what the detector trained on, logged with its run
        pictures["dfmgan_triplets"] = torch.from_numpy(bank_grid(bank, cfg.n_pictures * 2))
    report(metrics, {**state(True), "pictures": pictures})
    return metrics


def set_train_modes(cfg: DetectorConfig, nets: nn.ModuleDict) -> None:
    """R and D in training mode; F too when trained by gradient, while a copied F runs in
    eval mode on R's copied BN statistics."""
    nets.train()
    if "F" in nets and cfg.df_update == "copy":
        nets["F"].eval()


def make_optimizer(cfg: DetectorConfig, trained: list[nn.Module]) -> torch.optim.Adam:
    """One Adam over the trained networks (docs/detector.md §4.5). Fused: one kernel updates every
    parameter, where torch's default on CPU loops over the tensors (about a tenth of the small
    preset's step)."""
    return torch.optim.Adam([p for net in trained for p in net.parameters()], lr=cfg.lr, fused=True)


def _train_step(cfg, batch, R, D, F, loss_fn, optimizer, device) -> dict[str, float]:
    terms = _loss_terms(cfg, batch, R, D, F, loss_fn, device)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in terms.items()}


def _loss_terms(cfg, batch, R, D, F, loss_fn, device) -> dict[str, torch.Tensor]:
    """The forward pass of a step: the loss terms of `batch`, `total` the one minimised."""
    # channels-last: R, D and F run NHWC, about a fifth faster on CPU than NCHW (docs/detector.md §4.6)
    I, I_a, M = (batch[k].to(device, memory_format=torch.channels_last, non_blocking=True) for k in ("I", "I_a", "M"))
    I_r = R(I_a)
    x = torch.cat([I_r.detach() if cfg.detach_reconstruction else I_r, I_a], dim=1)
    P = torch.softmax(D(x), dim=1)
    features_r = features_t = None
    if F is not None:
        features_r = F(I_r)  # F's weights are frozen in copy mode; the gradient still reaches I_r and R
        with torch.no_grad():
            features_t = F(I)
    return loss_fn(I, I_r, P, M, features_r, features_t)


def _progress_metrics(cfg, sums, step, steps_per_epoch, world, train_seconds, steps_per_s, optimizer) -> dict:
    n = max(sums.get("_n", 0), 1)
    out = {f"loss/{name}": value / n for name, value in sums.items() if name != "_n"}
    out.update({"epoch": step / steps_per_epoch, "step": step, "kimg": step * cfg.batch_size * world / 1000,
                "lr": optimizer.param_groups[0]["lr"], "train_seconds": round(train_seconds, 3),
                "steps_per_s": round(steps_per_s, 3)})
    return out


@torch.no_grad()
def anomaly_maps(cfg: DetectorConfig, R: nn.Module, D: nn.Module, images: np.ndarray, device,
                 keep=()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Anomaly maps [M, H, W], image scores [M] and the reconstructions of the indices in
    `keep` of uint8 images [M, H, W, 3]; the nets are left in train mode."""
    R.eval()
    D_eval = copy.deepcopy(D).eval()
    if cfg.eval_reparam and cfg.lk:
        D_eval.reparameterize()
    k = score_kernel(cfg)
    maps, scores, recon = [], [], {}
    for start in range(0, len(images), cfg.eval_batch_size):
        I = torch.from_numpy(images[start:start + cfg.eval_batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
        I_r = R(I)
        P = torch.softmax(D_eval(torch.cat([I_r, I], dim=1)), dim=1)[:, 1:]  # [N, 1, H, W]
        scores.append(F_.avg_pool2d(P, k, stride=1, padding=k // 2).amax(dim=(1, 2, 3)).cpu())
        maps.append(P[:, 0].cpu())
        for j in range(len(I)):
            if start + j in keep:
                recon[start + j] = I_r[j].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    R.train()
    maps_np = torch.cat(maps).numpy() if maps else np.zeros((0, cfg.img_size, cfg.img_size), np.float32)
    scores_np = torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)
    return maps_np, scores_np, recon


def validate(cfg: DetectorConfig, R: nn.Module, D: nn.Module, val: ValidationSet, device) -> dict:
    """The metrics of the validation split, named `val_<metric>` (val_image_AUROC, ...)."""
    maps, scores, _ = anomaly_maps(cfg, R, D, val.images, device)
    metrics = detection_metrics(val.labels, scores, val.masks, maps, cfg.aupro_limit)
    return {f"val_{name}": value for name, value in metrics.items()}


def evaluate(cfg: DetectorConfig, R: nn.Module, D: nn.Module, data, device) -> tuple[dict, dict]:
    """Test-split metrics and the anomaly-map picture; the nets are left in train mode."""
    picks = picture_indices(data.test_types, cfg.n_pictures)
    test = np.asarray(data.test)
    maps_np, scores_np, recon = anomaly_maps(cfg, R, D, test, device, picks)
    metrics = detection_metrics(data.test_labels, scores_np, np.asarray(data.test_masks), maps_np, cfg.aupro_limit)
    rows = [[test[i], _to_uint8(recon[i]), heatmap(maps_np[i]), np.repeat(data.test_masks[i][..., None] * 255, 3, 2)]
            for i in picks]
    pictures = {}
    if rows:
        from trainables.pictures import grid

        zoom = max(1, 128 // cfg.img_size)
        cells = [np.repeat(np.repeat(c, zoom, 0), zoom, 1) for row in rows for c in row]
        pictures["anomaly_maps"] = torch.from_numpy(grid(cells, ncols=4))
    return metrics, pictures


def picture_indices(test_types: tuple[str, ...], n: int) -> list[int]:
    """Defective test images taken round-robin over the defect types, plus one good image."""
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(test_types):
        by_type.setdefault(t, []).append(i)
    good = by_type.pop("good", [])
    queues = [by_type[t] for t in sorted(by_type)]
    ordered = [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)]
    picks = ordered[:max(n - 1, 0)] + good[:1] if good else ordered[:n]
    return sorted(picks[:n])


def heatmap(p: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB heat image (black, purple, red, yellow, white). uint8 [H, W, 3]"""
    anchors = np.array([[0, 0, 0], [90, 20, 140], [220, 40, 40], [250, 210, 40], [255, 255, 255]], np.float64)
    t = np.clip(p, 0, 1) * (len(anchors) - 1)
    i = np.minimum(t.astype(int), len(anchors) - 2)
    f = (t - i)[..., None]
    return (anchors[i] * (1 - f) + anchors[i + 1] * f).astype(np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _restore(cfg: DetectorConfig, nets: nn.ModuleDict, optimizer) -> tuple[int, float]:
    try:
        ckpt = load_checkpoint(cfg.resume)
    except FileNotFoundError:
        raise UserInputError(f"resume={cfg.resume}: no checkpoint.pt there") from None
    saved = ckpt["config"]
    mine = to_flat(cfg)
    changed = [k for k in _ARCHITECTURE if saved.get(k) != mine[k]]
    if changed:
        raise UserInputError(f"resume={cfg.resume}: the checkpoint was trained with different {changed}; "
                             f"expected the same values as the run being resumed")
    nets.load_state_dict(ckpt["nets"])
    optimizer.load_state_dict(ckpt["optimizer"])
    _lay_out_like_params(optimizer)
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), float(ckpt["train_seconds"])


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's optimizer state the parameter's memory layout. The fused Adam
    updates a parameter and its moments as flat memory, so a moment laid out differently (a
    checkpoint written before the weights were channels-last) would silently pair the wrong
    elements; load_state_dict keeps the layout the state was saved in."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param).copy_(value)


def _ddp(net: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

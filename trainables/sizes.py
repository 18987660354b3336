"""Bytes of a trainer's checkpoint and of its weights-only file, counted without allocating.

The networks a trainer builds are built again on torch's `meta` device (shapes and dtypes, no
storage), so the paper preset's sizes come from the code that trains, not from a table that
drifts. A full checkpoint is every network's state dict plus Adam's two moments (exp_avg,
exp_avg_sq) per trained parameter; RNG states, counters and pictures are small and not
counted. The weights-only file is what MLflow keeps by default (`WEIGHTS_FILE`,
trainables/ray_adapter.py): the detector's networks (R, D, F), DFMGAN's G_ema. Not here: how
often checkpoints are written (platform/cost.py).
"""

import dataclasses

import torch
import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class CheckpointSize:
    full: int       # bytes of checkpoint.pt: networks + optimiser state
    weights: int    # bytes of weights.pt: the networks a user loads to evaluate or generate


def checkpoint_size(method: str, cfg) -> CheckpointSize:
    """Sizes for one trial's trainer (a method outside these: nothing counted)."""
    with torch.device("meta"):
        if method == "detector":
            return _detector(cfg)
        if method in ("gan_stage1", "gan_stage2", "classifier"):
            # the classifier's checkpoint holds only accuracies; its stage-2 models are not kept
            return _gan(cfg, 1 if method == "gan_stage1" else 2) if method != "classifier" else CheckpointSize(0, 0)
    return CheckpointSize(0, 0)


def _detector(cfg) -> CheckpointSize:
    from trainables.detector.model import DefectPredictor, EncoderFeatures, ReconstructionNet, VGGFeatures
    from trainables.detector.train import df_layers

    nets = [ReconstructionNet(cfg.r_base),
            DefectPredictor(cfg.d_base, tuple(cfg.lk_kernels) if cfg.lk else None, cfg.lk_small_kernel)]
    trained = list(nets)
    if cfg.df:
        F = VGGFeatures(df_layers(cfg)) if cfg.df_source == "vgg19" else EncoderFeatures(cfg.r_base, df_layers(cfg))
        nets.append(F)
        if cfg.df_update == "grad":
            trained.append(F)
    weights = sum(_state_bytes(net) for net in nets)
    return CheckpointSize(weights + 2 * sum(_param_bytes(net) for net in trained), weights)


def _gan(cfg, stage: int) -> CheckpointSize:
    from trainables.gan.train import build_networks

    G, D, D_match = build_networks(cfg, stage)
    nets = [G, G, D] + ([D_match] if D_match is not None else [])   # G and G_ema
    if stage == 2:  # stage 2 trains only the defect-aware modules of G
        G_trained = sum(_param_bytes(module) for module in G.defect_modules())
    else:
        G_trained = _param_bytes(G)
    trained = G_trained + _param_bytes(D) + (_param_bytes(D_match) if D_match is not None else 0)
    return CheckpointSize(sum(_state_bytes(net) for net in nets) + 2 * trained, _state_bytes(G))


def _state_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def _param_bytes(net: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())

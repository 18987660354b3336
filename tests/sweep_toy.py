"""A toy trainer for the sweep tests: seconds to run, fails once on request, resumes exactly.

It follows the trainer contract (frozen config with the identity fields, `make_config`,
`report(metrics, checkpoint)` once per epoch, the last report with `"final": 1` and pictures)
so the Ray adapter's two paths can be tested for resume without a minute-long real trainer.
Rank 0 raises at epoch `fail_at` when the file `marker` does not exist yet (and creates it):
the restarted trial or worker group must then continue from its last checkpoint.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.checkpoint import load_checkpoint
from trainables.config import build_config
from trainables.errors import UserInputError


@dataclass(frozen=True)
class ToyConfig:
    data: str = "embedded"
    category: str = "weave"
    seed: int = 0
    preset: str = "tiny"
    device: str = "auto"
    resume: str | None = None
    epochs: int = 3
    fail_at: int = -1            # epoch at which rank 0 fails once (-1 = never)
    marker: str = ""             # file whose absence means "not failed yet"
    start_from: str | None = None  # an earlier run's checkpoint to start from (like GAN stage 2)
    user_error: str = ""         # raise this UserInputError at the start (a bad value only the trainer sees)
    attempts: str = ""           # file that gets one line per start of the trainer


PRESETS = {"tiny": {}, "small": {}, "paper": {}}


def make_config(preset: str = "tiny", overrides: dict | None = None) -> ToyConfig:
    return build_config(ToyConfig, PRESETS, preset, overrides)


def train_toy(cfg: ToyConfig, report) -> dict:
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if cfg.attempts:
        with open(cfg.attempts, "a") as out:
            out.write("start\n")
    if cfg.user_error:
        raise UserInputError(cfg.user_error)
    start = int(load_checkpoint(cfg.resume)["epoch"]) if cfg.resume else 0
    metrics = {}
    for epoch in range(start, cfg.epochs):
        if epoch == cfg.fail_at and rank == 0 and not Path(cfg.marker).exists():
            Path(cfg.marker).write_text("failed once\n")
            raise RuntimeError(f"injected failure at epoch {epoch}")
        final = epoch == cfg.epochs - 1
        metrics = {"epoch": epoch + 1, "loss/total": 1.0 / (epoch + 1), "resumed_from": start, "world": world,
                   "category": cfg.category}
        if final:
            metrics.update(final=1, image_AUROC=0.9, pixel_AUROC="unavailable",
                           pixel_AUROC_note="toy trainer has no pixel maps")
            if cfg.start_from:
                metrics.update(started_from_epoch=int(load_checkpoint(cfg.start_from)["epoch"]),
                               KID_x1e3=1.5, clustered_LPIPS=0.25)
        state = {"epoch": epoch + 1, "weights": torch.full((2,), float(epoch))}
        if final:
            state["pictures"] = {"toy": torch.zeros(4, 4, 3, dtype=torch.uint8)}
        report(metrics, state if rank == 0 else None)
    return metrics

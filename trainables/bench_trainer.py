"""A trivial trainer for the driver benchmark (platform/bench_driver.py): it does no work but
sleep, so what a sweep of it measures is the platform's own cost per trial.

It follows the trainer contract (a frozen config with the identity fields, `make_config`,
`report(metrics, checkpoint)`, the last report with `"final": 1`) and reports `reports` times,
`step_s` seconds apart, attaching a small checkpoint `checkpoints` times (evenly spaced, the
last one with the final report), so Tune, the Ray adapter and the MLflow callback do exactly
what they do for a real trainer. It lives in trainables/ because the trials import it on the
cluster's workers, which cannot import platform/ and do not have tests/ on their path.
"""

import time
from dataclasses import dataclass

from trainables.checkpoint import load_checkpoint
from trainables.config import build_config
from trainables.errors import UserInputError


@dataclass(frozen=True)
class BenchConfig:
    data: str = "embedded"
    category: str = "bolt"
    seed: int = 0
    preset: str = "tiny"
    device: str = "auto"
    resume: str | None = None
    reports: int = 20            # reports per trial
    checkpoints: int = 2         # of those, how many carry a checkpoint (the last report always does)
    step_s: float = 0.1          # seconds of "training" (a sleep) before each report

    def validate(self) -> None:
        if self.reports < 1 or not 0 <= self.checkpoints <= self.reports or self.step_s < 0:
            raise UserInputError(f"bench trainer: reports={self.reports}, checkpoints={self.checkpoints}, "
                                 f"step_s={self.step_s}; expected reports >= 1, 0 <= checkpoints <= reports, "
                                 f"step_s >= 0")


PRESETS = {"tiny": {}, "small": {}, "paper": {}}


def make_config(preset: str = "tiny", overrides: dict | None = None) -> BenchConfig:
    return build_config(BenchConfig, PRESETS, preset, overrides)


def checkpoint_at(cfg: BenchConfig) -> set[int]:
    """The report numbers (1-based) that carry a checkpoint: evenly spaced, ending at the last."""
    return {round(cfg.reports * k / cfg.checkpoints) for k in range(1, cfg.checkpoints + 1)}


def train_bench(cfg: BenchConfig, report) -> dict:
    start = int(load_checkpoint(cfg.resume)["report"]) if cfg.resume else 0
    saves = checkpoint_at(cfg)
    metrics = {}
    for k in range(start + 1, cfg.reports + 1):
        time.sleep(cfg.step_s)
        metrics = {"report": k, "loss/total": 1.0 / k}
        if k == cfg.reports:
            metrics.update(final=1, image_AUROC=0.5)
        report(metrics, {"report": k} if k in saves else None)
    return metrics

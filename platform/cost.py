"""The cost model behind `python -m platform.sweep ... --dry-run`: seconds of one trial's trainer.

A trial costs its number of steps times the time of one step, capped by its wall-clock budget
(`minutes` for the detector, `stage{1,2}_minutes` for DFMGAN), plus a fixed cost for loading,
evaluation and pictures. Step times come from the table below, by kind of step, preset and
device; the CPU figures were measured with `python -m platform.bench` on this project's 2-core
machine with one core per trial (as a local sweep runs them), the GPU figures are estimates,
and the printout says which kind it used. Not here: Ray's own per-trial overhead, which each
sweep measures and records (`overhead_s`, platform/tracking.py).
"""

import math
from dataclasses import dataclass

# Seconds per step, by (preset, device). detector: one optimizer step of `batch_size` images.
# gan_stage1 / gan_stage2: one DFMGAN iteration (G, D and, in stage 2, D_match phases; lazy
# regularisation amortised). classifier: one ResNet-34 step of `cls_batch` images.
# cpu: `python -m platform.bench --preset P --threads 1` on the 2-core machine (2026-12-01;
# the detector's 2026-12-03, after its FFT weight gradients and fused Adam; its paper step, 210 s,
# is the benchmark's as-trained figure alone: 2 steps in a 6-minute budget, 16 GB resident), except
# DFMGAN's paper preset, which did not finish a stage-1 iteration in 10 minutes there (an
# estimate). gpu: estimates for one current GPU; run the benchmark on yours.
STEP_SECONDS: dict[str, dict[tuple[str, str], float]] = {
    "detector": {("tiny", "cpu"): 0.062, ("small", "cpu"): 0.39, ("paper", "cpu"): 210.0,
                 ("tiny", "gpu"): 0.02, ("small", "gpu"): 0.03, ("paper", "gpu"): 0.35},
    "gan_stage1": {("tiny", "cpu"): 0.11, ("small", "cpu"): 0.89, ("paper", "cpu"): 900.0,
                   ("tiny", "gpu"): 0.03, ("small", "gpu"): 0.05, ("paper", "gpu"): 0.6},
    "gan_stage2": {("tiny", "cpu"): 0.18, ("small", "cpu"): 1.43, ("paper", "cpu"): 1200.0,
                   ("tiny", "gpu"): 0.04, ("small", "gpu"): 0.07, ("paper", "gpu"): 0.8},
    "classifier": {("tiny", "cpu"): 0.27, ("small", "cpu"): 0.50, ("paper", "cpu"): 2.1,
                   ("tiny", "gpu"): 0.01, ("small", "gpu"): 0.01, ("paper", "gpu"): 0.05},
}
MEASURED = {("tiny", "cpu"), ("small", "cpu")}          # every kind measured; elsewhere some are estimates
FIXED_SECONDS = {"tiny": 3, "small": 10, "paper": 120}  # loading, evaluation, pictures, metrics
# the kinds of step each trainer takes (the classification protocol trains a stage 2 per defect type)
STEPS_OF = {"detector": ("detector",), "gan_stage1": ("gan_stage1",), "gan_stage2": ("gan_stage2",),
            "classifier": ("gan_stage2", "classifier")}


@dataclass(frozen=True)
class Trial:
    """What the model needs to know about one trial besides its config."""
    method: str           # detector | gan_stage1 | gan_stage2 | classifier | module:function
    n_train: int          # the category's training images (detector epochs are over these)
    n_defect_types: int   # the classifier trains one stage 2 per defect type


def trial_seconds(cfg, trial: Trial, preset: str, device: str, workers: int) -> float:
    """Expected wall time of one trial's trainer (device: "cpu" | "gpu")."""
    step = {kind: step_seconds(kind, preset, device) for kind in STEP_SECONDS}
    fixed = FIXED_SECONDS.get(preset, FIXED_SECONDS["paper"])
    if trial.method == "detector":
        per_epoch = cfg.steps_per_epoch or math.ceil(trial.n_train / (cfg.batch_size * workers))
        return _capped(cfg.epochs * per_epoch * step["detector"], cfg.minutes) + fixed
    if trial.method == "gan_stage1":  # `batch` is the total over ranks: each rank does its share
        return _capped(_gan_iterations(cfg.stage1_kimg, cfg.batch) * step["gan_stage1"] / workers,
                       cfg.stage1_minutes) + fixed
    stage2 = _capped(_gan_iterations(cfg.stage2_kimg, cfg.batch) * step["gan_stage2"] / workers,
                     cfg.stage2_minutes) + fixed
    if trial.method == "gan_stage2":
        return stage2
    if trial.method == "classifier":
        partitions = 1 if cfg.partition is not None else cfg.partitions
        images = trial.n_defect_types * cfg.cls_per_type
        classifier = cfg.cls_epochs * math.ceil(images / cfg.cls_batch) * step["classifier"]
        return partitions * (trial.n_defect_types * stage2 + classifier)
    return fixed  # a trainer outside the registry (tests' toy): no model of its steps


def basis(methods, preset: str, device: str) -> str:
    """One line saying which step times a plan of these methods used and how they were obtained."""
    kinds = [kind for kind in STEP_SECONDS if any(kind in STEPS_OF.get(method, ()) for method in methods)]
    where = "measured on a 2-core CPU, 1 core per trial" if (preset, device) in MEASURED else \
        "partly or wholly estimated, see platform/cost.py; `python -m platform.bench` measures yours"
    steps = ", ".join(f"{kind} {step_seconds(kind, preset, device):g} s/step" for kind in kinds) \
        or "no step model for these trainers"
    return f"{steps} ({preset} preset on {device}, {where}) + {FIXED_SECONDS.get(preset, 120)} s per trial " \
           f"of loading and evaluation; capped by the trials' minute budgets"


def step_seconds(kind: str, preset: str, device: str) -> float:
    """A kind of step's time; a preset outside the table costs like `paper`."""
    table = STEP_SECONDS[kind]
    return table.get((preset, device), table[("paper", device)])


def _gan_iterations(kimg: float, batch: int) -> int:
    return math.ceil(kimg * 1000 / batch)


def _capped(seconds: float, minutes: float | None) -> float:
    return min(seconds, minutes * 60) if minutes else seconds


@dataclass(frozen=True)
class CheckpointBytes:
    """What one trial writes: checkpoints to the sweep's storage over its life, what storage
    still holds at its end, and what its MLflow run keeps."""
    written: int          # every checkpoint the trial saves to storage (interval ones + the final)
    kept: int             # in storage at the end (Tune/Train keep the newest only)
    mlflow: int           # the run's model artifact: weights only, or the full checkpoint when asked
    checkpoints: int      # how many are written


def checkpoint_bytes(cfg, method: str, trainer_seconds: float, full: int, weights: int,
                     full_in_mlflow: bool = False, kept: int = 1) -> CheckpointBytes:
    """Bytes of one trial's checkpoints given its expected trainer time (`trial_seconds`) and the
    sizes counted by trainables/sizes.py. A trainer checkpoints at the first report at least
    `checkpoint_minutes` after the last checkpoint (0 = at every report, None = final only), so
    over a trial it writes min(reports, time / interval) of them, plus the final one."""
    reports = _reports(cfg, method)
    interval = getattr(cfg, "checkpoint_minutes", None)
    if interval is None:
        periodic = 0
    elif interval == 0:
        periodic = reports
    else:
        periodic = min(reports, math.floor(trainer_seconds / (60 * interval)))
    count = periodic + 1
    return CheckpointBytes(count * full, min(kept, count) * full, full if full_in_mlflow else weights, count)


def _reports(cfg, method: str) -> int:
    """Intermediate reports (the final one not counted) a trainer makes over its whole duration."""
    if method == "detector":
        return max(0, cfg.epochs // cfg.report_every - 1)
    if method in ("gan_stage1", "gan_stage2"):
        kimg = cfg.stage1_kimg if method == "gan_stage1" else cfg.stage2_kimg
        return max(0, math.ceil(kimg / cfg.tick_kimg) - 1)
    return 0

"""DFMGAN's run configuration (Duan et al., AAAI 2023): every knob of stage 1, stage 2 and the
classification protocol, and the presets.

Imports neither torch nor Ray, so a sweep validates its plan without loading the trainer.
"""

from dataclasses import dataclass

from trainables.config import build_config
from trainables.errors import UserInputError


@dataclass(frozen=True)
class GanConfig:
    """Every knob of a DFMGAN run (stage 1, stage 2, classification); defaults = the paper setting."""
    # run identity
    data: str = "embedded"                 # "embedded" or a folder in the MVTec AD layout
    category: str = ""
    defect: str = ""                       # stage 2: the defect type to learn
    seed: int = 0
    preset: str = "paper"
    device: str = "auto"                   # auto | cpu | cuda[:i]
    resume: str | None = None              # checkpoint folder of this run to continue
    stage1: str | None = None              # stage 2 / classification: the stage-1 checkpoint folder
    holdout_seed: int | None = None        # stage 2: learn from the base third of this seed's partition 0
                                           # (trainables/data/split.py); None = every image of the type
    # networks (docs/dfmgan.md §2.1, §2.4, §3.1, §3.3)
    resolution: int = 256                  # px, a power of 2
    z_dim: int = 512                       # = w_dim
    w_dim: int = 512
    mapping_layers: int = 2                # StyleGAN2-ADA 'auto' (not 8), for both mapping networks
    channel_base: int = 16384              # G and D channels(res) = min(base / res, max)
    channel_max: int = 512
    dmatch_channel_base: int = 4096        # D_match (the reference's --dmatch-scale default 4096/128)
    dmatch_channel_max: int = 128
    mbstd_group: int = 4
    res_st: int = 0                        # first residual-block resolution; 0 = resolution / 4
    mask_threshold: float = 0.0            # hard gate 1[M >= threshold]
    # optimisation (docs/dfmgan.md §2.6, §2.8)
    batch: int = 32                        # total over ranks; divisible by mbstd_group, even for MS
    lr: float = 0.0025                     # G, D and D_match (before the lazy-regularisation rescaling)
    r1_gamma: float | None = None          # None = 0.0002·resolution²/batch (0.4096 at 256 px, batch 32)
    ema_kimg: float | None = None          # G_ema half-life; None = batch·10/32
    ema_rampup: float = 0.05               # stage 1: half-life <= this × images seen; 0 = off
    style_mixing: float = 0.9
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    G_reg_interval: int = 4
    D_reg_interval: int = 16
    # ADA (docs/dfmgan.md §2.7)
    augment: bool = True                   # ADA 'bgc' on everything D sees
    augment_p: float = 0.0                 # initial p (both stages; the reference restarts p in stage 2)
    ada_target: float | None = 0.6         # E[sign D(x_real)] target; None = keep p fixed
    ada_interval: int = 4
    ada_kimg: float = 500                  # p can move by 1 per ada_kimg (stage 1)
    ada_kimg_stage2: float = 100           # faster, as whenever the reference resumes
    # stage 2 (paper §3.3, docs/dfmgan.md §3.4-3.5)
    lambda_match: float = 1.0
    lambda_ms: float = 0.1                 # mode-seeking weight λ
    tanh_k: float = 10.0                   # soft mask tanh(k·M) for D_match and MS
    # durations and reporting
    stage1_kimg: float = 3000
    stage2_kimg: float = 400
    stage1_minutes: float | None = None    # wall-clock budget of stage 1; None = stage1_kimg only
    stage2_minutes: float | None = None
    tick_kimg: float = 4.0                 # one report per tick
    checkpoint_minutes: float | None = 10.0  # at the first tick this long after the last checkpoint;
                                           # 0 = at every tick, None = only the final one
    # generation and metrics (docs/dfmgan.md §4, §5)
    n_generate: int = 64                   # triplets written at the end of stage 2
    n_pictures: int = 16                   # samples in stage 1's grid and triplets in stage 2's
    kid_gen: int = 5000                    # generated images for KID
    clpips_gen: int = 1000                 # generated images for clustered LPIPS
    clpips_cap: int = 200                  # images kept per cluster
    weights_dir: str | None = None         # Inception / AlexNet / ResNet-34 files (plus the defaults)
    # classification protocol (paper §4.3, docs/dfmgan.md §6)
    partition: int | None = None           # which seeded partition; None = all `partitions`
    partitions: int = 3
    base_fraction: float = 1 / 3           # of each defect type's images: stage-2 training ("base") set
    cls_per_type: int = 1000               # generated training images per defect type
    cls_epochs: int = 30
    cls_batch: int = 8
    cls_lr: float = 1e-4
    cls_img_size: int = 256                # classifier input size; 0 = resolution
    cls_pretrained: bool = True            # ImageNet ResNet-34 when provisioned, else from scratch (recorded)

    def validate(self) -> None:
        if not self.category:
            raise UserInputError("category: expected a category name (e.g. --category washer)")
        if self.resolution < 16 or self.resolution & (self.resolution - 1):
            raise UserInputError(f"resolution={self.resolution}: expected a power of 2, at least 16")
        if self.res_st and (self.res_st & (self.res_st - 1) or not 8 <= self.res_st <= self.resolution):
            raise UserInputError(f"res_st={self.res_st}: expected 0 or a power of 2 in [8, {self.resolution}]")
        if self.batch % self.mbstd_group or self.batch % 2:
            raise UserInputError(f"batch={self.batch}: expected a multiple of mbstd_group={self.mbstd_group} "
                                 "and even (mode seeking halves it)")
        positive = {"z_dim": self.z_dim, "w_dim": self.w_dim, "mapping_layers": self.mapping_layers,
                    "channel_base": self.channel_base, "channel_max": self.channel_max,
                    "dmatch_channel_base": self.dmatch_channel_base, "dmatch_channel_max": self.dmatch_channel_max,
                    "G_reg_interval": self.G_reg_interval, "D_reg_interval": self.D_reg_interval,
                    "ada_interval": self.ada_interval, "pl_batch_shrink": self.pl_batch_shrink,
                    "partitions": self.partitions, "cls_batch": self.cls_batch, "n_pictures": self.n_pictures}
        for name, value in positive.items():
            if value < 1:
                raise UserInputError(f"{name}={value}: expected a positive integer")
        if self.seed < 0:
            raise UserInputError(f"seed={self.seed}: expected a non-negative integer")
        for name in ("stage1_minutes", "stage2_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserInputError(f"{name}={value}: expected a positive number of minutes")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise UserInputError(f"checkpoint_minutes={self.checkpoint_minutes}: expected >= 0 (0 = every tick)")
        if min(self.lambda_match, self.lambda_ms, self.augment_p, self.style_mixing, self.pl_weight) < 0:
            raise UserInputError("lambda_match, lambda_ms, augment_p, style_mixing, pl_weight: expected >= 0")
        if self.partition is not None and not 0 <= self.partition < self.partitions:
            raise UserInputError(f"partition={self.partition}: expected 0..{self.partitions - 1}")
        if self.holdout_seed is not None and self.holdout_seed < 0:
            raise UserInputError(f"holdout_seed={self.holdout_seed}: expected a non-negative integer or none")
        if not 0 < self.base_fraction < 1:
            raise UserInputError(f"base_fraction={self.base_fraction}: expected a fraction in (0, 1)")

    def check_world(self, world_size: int) -> None:
        """Each of `world_size` ranks draws batch / world_size images, in whole minibatch-std groups."""
        if self.batch % world_size or (self.batch // world_size) % self.mbstd_group:
            raise UserInputError(f"batch={self.batch}: expected a multiple of world size {world_size} x "
                                 f"mbstd_group={self.mbstd_group} (set --set batch=... or fewer "
                                 f"--workers-per-trial)")

    @property
    def gamma(self) -> float:
        return self.r1_gamma if self.r1_gamma is not None else 0.0002 * self.resolution ** 2 / self.batch

    @property
    def ema_half_life_kimg(self) -> float:
        return self.ema_kimg if self.ema_kimg is not None else self.batch * 10 / 32


# config fields that only stage 2 reads: changing them keeps a finished stage 1 reusable
STAGE2_ONLY = ("defect", "resume", "stage1", "lambda_ms", "lambda_match", "n_generate", "stage2_minutes",
               "stage2_kimg", "holdout_seed")


# Presets: flat deltas on the defaults (= the paper setting).
PRESETS: dict[str, dict] = {
    "paper": {},
    # a CPU laptop: the 64×64 smoke networks of docs/dfmgan.md §7, about 10 minutes per stage on 2 cores (the CLI's
    # minute budgets may end a stage earlier); lr ×4 because 10 kimg is 1/300 of the paper's stage 1
    # (at 0.0025 stage 1 still draws blobs after 4 minutes, at 0.01 it draws the object)
    "small": {"resolution": 64, "z_dim": 128, "w_dim": 128, "channel_base": 2048, "channel_max": 128,
              "dmatch_channel_base": 512, "dmatch_channel_max": 32, "batch": 8, "lr": 0.01,
              "stage1_kimg": 25, "stage2_kimg": 15, "tick_kimg": 1.0, "ada_kimg": 100, "ada_kimg_stage2": 20,
              "kid_gen": 1000, "clpips_gen": 200, "cls_per_type": 200, "cls_epochs": 10, "cls_img_size": 64,
              "checkpoint_minutes": 0},
    # tests: seconds
    "tiny": {"resolution": 32, "z_dim": 32, "w_dim": 32, "channel_base": 256, "channel_max": 32,
             "dmatch_channel_base": 128, "dmatch_channel_max": 16, "batch": 4,
             "stage1_kimg": 0.016, "stage2_kimg": 0.016, "tick_kimg": 0.008, "ada_kimg": 1, "ada_kimg_stage2": 1,
             "n_generate": 8, "n_pictures": 4, "kid_gen": 16, "clpips_gen": 8, "cls_per_type": 8,
             "cls_epochs": 1, "cls_batch": 8, "cls_img_size": 32, "partitions": 1, "checkpoint_minutes": 0},
}


def make_config(preset: str = "small", overrides: dict | None = None) -> GanConfig:
    return build_config(GanConfig, PRESETS, preset, overrides)

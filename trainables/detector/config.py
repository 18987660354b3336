"""The detector's run configuration (Peng et al., Sensors 2024): every knob, and the presets.

Imports neither torch nor Ray, so a sweep validates its plan without loading the trainer.
"""

from dataclasses import dataclass
from typing import Literal

from trainables.config import build_config
from trainables.errors import UserInputError


@dataclass(frozen=True)
class DetectorConfig:
    """Every knob of a detector run; defaults are the paper setting (preset `paper`)."""
    # run identity
    data: str = "embedded"                 # "embedded" or a folder in the MVTec AD layout
    category: str = ""
    seed: int = 0
    preset: str = "paper"
    device: str = "auto"                   # auto | cpu | cuda[:i]
    resume: str | None = None              # checkpoint directory to resume from
    # data and synthesis (paper §3.1, docs/detector.md §3)
    img_size: int = 256                    # px; a multiple of 32
    anomaly_source: Literal["mvtec", "dtd", "mvtec_defects", "dfmgan"] = "mvtec"
    dfmgan_banks: tuple[str, ...] = ()     # dfmgan: the category's finished DFMGAN stage-2 checkpoint
                                           # folders at one λ, one per defect type (their triplets.npz)
    source_per_category: int = 0           # images per other category in the pool; 0 = all
    dtd_root: str | None = None            # DTD folder for anomaly_source=dtd; absent = procedural bank
    fg_aware: bool = True                  # masks only on the object's foreground
    p_anom: float = 0.5                    # fraction of anomalous samples
    opacity_range: tuple[float, ...] = (0.1, 1.0)  # blend opacity α ~ U(lo, hi)
    perlin_scale_max: int = 5              # Perlin lattice 2^U{0..max} per axis
    perlin_threshold: float = 0.5
    n_augmenters: int = 3                  # of DRAEM's 10, without replacement
    rot_p: float = 0.3                     # probability of rotating the normal image
    rot_deg: float = 45.0                  # rotation U(−deg, deg)
    # validation split (docs/detector.md §5.3): held-out train/good images + synthetic anomalies
    val_fraction: float = 0.0              # share of train/good held out of training; 0 = off
    val_seed: int = 0                      # picks the held-out images and their anomalies (not `seed`:
                                           # trials with other training seeds see the same validation set)
    # networks (paper §3.2, §3.3)
    r_base: int = 128                      # width of R's first block (DRAEM: 128)
    d_base: int = 64                       # width of D's first block (DRAEM: 64)
    df: bool = True                        # deep-feature consistency loss (ablation 4.4.1)
    df_update: Literal["copy", "grad"] = "copy"   # F by parameter copying or by gradient (4.4.3)
    df_source: Literal["ae_encoder", "vgg19"] = "ae_encoder"  # F's architecture (docs/detector.md §4.2, A or B)
    df_layers: tuple[int, ...] = ()        # F levels in L_DF; () = (3, 4, 5) for ae_encoder, (1, 2, 3) for vgg19
    df_copy_every: int = 1                 # copy R.encoder -> F every this many steps
    df_normalize: bool = False             # divide each L_DF level by its mean squared target
    weights_dir: str | None = None         # where vgg19 weights are looked up (plus the defaults)
    lk: bool = True                        # large-kernel units in D (ablation 4.4.1)
    lk_kernels: tuple[int, ...] = (31, 29, 27, 13)   # k at D's e3..e6 (RepLKNet-31B)
    lk_small_kernel: int = 5
    lk_weight_grad: Literal["auto", "fft", "direct"] = "auto"  # large kernels' weight gradient by FFT or
                                           # directly; auto = FFT on CPU for k >= 13 (docs/detector.md §4.6)
    detach_reconstruction: bool = False    # True: no focal-loss gradient into R (DRAEM: False)
    # objective (docs/detector.md §4.4, mapping A)
    w_l2: float = 1.0
    w_ssim: float = 0.8
    w_df: float = 0.2
    w_focal: float = 1.0
    ssim_window: int = 11
    focal_gamma: float = 2.0
    # optimisation (paper §4.1 via DRAEM)
    epochs: int = 700                      # an epoch = as many samples as training images
    steps_per_epoch: int = 0               # 0 = ceil(N_train / (batch_size · world_size))
    batch_size: int = 8                    # per process
    lr: float = 1e-4
    lr_milestones: tuple[float, ...] = (4 / 7, 6 / 7)   # fractions of training (400/700, 600/700)
    lr_gamma: float = 0.1
    minutes: float | None = None           # wall-clock training budget; None = all epochs
    loader_workers: int | None = None      # synthesis processes per rank; None = from device and CPUs, 0 = in line
    # evaluation and reporting
    eval_holdout_seed: int | None = None   # evaluate on the good test images plus the defect images
                                           # held back from DFMGAN's stage 2 (partition 0 of this seed,
                                           # trainables/data/split.py); None = the whole test split
    holdout_fraction: float = 1 / 3        # the base share of each defect type that stage 2 learns from
    score_kernel: int = 21                 # image score = max of the k×k mean-filtered map at 256 px; scaled
    aupro_limit: float = 0.3
    eval_batch_size: int = 16
    eval_reparam: bool = True              # evaluate D with its large kernels fused
    n_pictures: int = 6                    # test images in the anomaly-map picture
    report_every: int = 1                  # epochs between reports
    checkpoint_minutes: float | None = 10.0  # at the first report this long after the last checkpoint;
                                           # 0 = at every report, None = only the final one

    def validate(self) -> None:
        if not self.category:
            raise UserInputError("category: expected a category name (e.g. --category weave)")
        if self.img_size < 32 or self.img_size % 32:
            raise UserInputError(f"img_size={self.img_size}: expected a multiple of 32 (D pools 5 times)")
        if len(self.opacity_range) != 2 or not 0 <= self.opacity_range[0] <= self.opacity_range[1] <= 1:
            raise UserInputError(f"opacity_range={list(self.opacity_range)}: expected [lo, hi] with 0 <= lo <= hi <= 1")
        if not 0 <= self.val_fraction < 1:
            raise UserInputError(f"val_fraction={self.val_fraction}: expected a share in [0, 1) "
                                 "(0 = no validation split)")
        if not 0 <= self.p_anom <= 1 or not 0 <= self.rot_p <= 1:
            raise UserInputError("p_anom and rot_p: expected probabilities in [0, 1]")
        if not 0 <= self.n_augmenters <= 10:
            raise UserInputError(f"n_augmenters={self.n_augmenters}: expected 0..10")
        bad_layers = [level for level in self.df_layers if level not in (1, 2, 3, 4, 5)]
        if bad_layers:
            raise UserInputError(f"df_layers={list(self.df_layers)}: expected levels in 1..5")
        if self.lk and not 1 <= len(self.lk_kernels) <= 6:
            raise UserInputError(f"lk_kernels={list(self.lk_kernels)}: expected 1 to 6 kernel sizes")
        if any(k < 1 or k % 2 == 0 for k in self.lk_kernels) or self.lk_small_kernel % 2 == 0:
            raise UserInputError(f"lk_kernels={list(self.lk_kernels)}, lk_small_kernel={self.lk_small_kernel}: "
                                 "expected odd sizes")
        positive = {"r_base": self.r_base, "d_base": self.d_base, "epochs": self.epochs,
                    "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "report_every": self.report_every, "df_copy_every": self.df_copy_every,
                    "ssim_window": self.ssim_window, "score_kernel": self.score_kernel}
        for name, value in positive.items():
            if value < 1:
                raise UserInputError(f"{name}={value}: expected a positive integer")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise UserInputError(f"loader_workers={self.loader_workers}: expected 0 (in line) or more processes")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise UserInputError(f"checkpoint_minutes={self.checkpoint_minutes}: expected >= 0 (0 = every report)")
        if self.lr <= 0 or self.minutes is not None and self.minutes <= 0:
            raise UserInputError("lr and minutes: expected positive numbers")
        if not 0 < self.holdout_fraction < 1:
            raise UserInputError(f"holdout_fraction={self.holdout_fraction}: expected a fraction in (0, 1)")
        if self.dfmgan_banks and self.anomaly_source != "dfmgan":
            raise UserInputError(f"dfmgan_banks: only read with anomaly_source=dfmgan, not {self.anomaly_source}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise UserInputError(f"lr_milestones={list(self.lr_milestones)}: expected fractions in (0, 1)")

    @property
    def leaky(self) -> bool:
        """The paper-literal source reads (other categories') test images."""
        return self.anomaly_source == "mvtec_defects"


# Presets: flat deltas on the defaults (= the paper setting).
PRESETS: dict[str, dict] = {
    "paper": {},
    # a CPU laptop: 64 px, narrow nets, kernels of RepLKNet-31B clipped to each stage's reach
    # (2·H−1 at 16, 8, 4, 2 px), a higher learning rate for a 5-minute budget.
    "small": {"img_size": 64, "r_base": 16, "d_base": 16, "lk_kernels": (31, 15, 7, 3),
              "lk_small_kernel": 5, "epochs": 200, "lr": 5e-4,
              "report_every": 10, "checkpoint_minutes": 0, "n_pictures": 8},
    # tests: seconds
    "tiny": {"img_size": 32, "r_base": 4, "d_base": 4, "lk_kernels": (7, 5, 3, 1), "lk_small_kernel": 3,
             "epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "lr": 1e-3, "source_per_category": 2,
             "eval_batch_size": 8, "n_pictures": 2, "checkpoint_minutes": 0},
}


def make_config(preset: str = "small", overrides: dict | None = None) -> DetectorConfig:
    return build_config(DetectorConfig, PRESETS, preset, overrides)

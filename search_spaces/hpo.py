"""Hyper-parameter search for the detector: Optuna (Ray Tune's OptunaSearch) with ASHA.

One study per category: OptunaSearch rejects `grid_search` axes (docs/platform.md §3.7), and
a category is not a hyper-parameter to optimise but a separate problem. Each study samples the
learning rate and the loss weights λ1 (L2), λ2 (SSIM) and λ3 (L_DF, the deep-feature term)
around a template trial (the full model, Table 4 row 7, unless `variant` says otherwise).

Selection never sees the test split: every trial holds `val_fraction` of its category's
train/good images out of training (the same images for every trial of a study: `val_seed`),
turns them into a labelled validation set with its own synthesis, and reports
`val_image_AUROC` at each report (docs/detector.md §5.3). Optuna maximises the final one;
ASHA stops weak trials early on the same metric, per report. The test split is decoded once,
at the end of each trial, and the table reports the test metrics of the trial chosen by the
validation metric. ASHA belongs here only: an ablation table needs every cell.
"""

from search_spaces.ablation import PAPER_ROWS, Variant, labels
from search_spaces.base import (Phase, Search, SweepPlan, TrialSpec, build_trial_config, check_extra,
                                dataset_info, pick_categories, validate_plan)
from trainables.errors import UserInputError

# field -> (distribution, low, high)
SPACE: dict[str, tuple[str, float, float]] = {
    "lr": ("loguniform", 1e-5, 3e-3),
    "w_l2": ("uniform", 0.5, 2.0),
    "w_ssim": ("uniform", 0.2, 2.0),
    "w_df": ("loguniform", 0.02, 1.0),
}
METRIC, MODE = "val_image_AUROC", "max"
ASHA_METRIC, ASHA_MODE = "val_image_AUROC", "max"   # every report carries it (val_fraction > 0)
VAL_FRACTION = 0.2                                  # share of train/good held out; --set val_fraction=F
DISTRIBUTIONS = ("uniform", "loguniform")


def build(data: str = "embedded", categories=None, samples: int = 8, row: int = 7, preset: str = "small",
          space: dict | None = None, extra: dict | None = None, grace_period: int = 1) -> SweepPlan:
    """One Optuna study (phase) per category; validated (UserInputError)."""
    info = dataset_info(data)
    categories = pick_categories(info, categories)
    space = dict(SPACE if space is None else space)
    _check_space(space)
    extra = check_extra(extra, tuple(space) + ("anomaly_source", "df", "lk", "df_update"))
    val_fraction = extra.get("val_fraction", VAL_FRACTION)
    if not 0 < float(val_fraction) < 1:
        raise UserInputError(f"--set val_fraction={val_fraction}: hpo selects on the validation split; "
                             "expected a share in (0, 1)")
    if samples < 1:
        raise UserInputError(f"--samples {samples}: expected at least 1 trial per study")
    if row not in PAPER_ROWS or PAPER_ROWS[row][0] is None:
        raise UserInputError(f"--rows {row}: expected one runnable Table 4 row as the template")
    variant: Variant = PAPER_ROWS[row][0]
    if not variant.df and "w_df" in space:
        del space["w_df"]  # no deep-feature term to weigh
    search = Search(space=space, metric=METRIC, mode=MODE, num_samples=samples, asha_metric=ASHA_METRIC,
                    asha_mode=ASHA_MODE, grace_period=grace_period)
    phases = []
    for category in categories:
        slug = variant.slug(bool(extra.get("dtd_root")))
        template = TrialSpec(method="detector", name=f"{category}-{slug}-hpo", group=slug, category=category,
                             seed=0, params=labels(variant, "hpo", bool(extra.get("dtd_root"))),
                             overrides={"val_fraction": VAL_FRACTION, **extra, **variant.overrides,
                                        "category": category, "seed": 0})
        phases.append(Phase(f"hpo-{category}", (template,), search))
    options = {"categories": list(categories), "samples": samples, "row": row, "space": space, "set": extra}
    plan = SweepPlan("hpo", preset, data, info.dataset, options, tuple(phases),
                     (f"hpo selects on val_image_AUROC ({float(val_fraction):g} of train/good held out, "
                      "synthetic anomalies); the test split is read once per trial, at its end",))
    plan = validate_plan(plan)
    # the sampled values reach the worker's config: its bounds must be valid values too
    for bound in (1, 2):
        build_trial_config(preset, data, phases[0].trials[0], **{name: spec[bound] for name, spec in space.items()})
    return plan


def _check_space(space: dict) -> None:
    for name, spec in space.items():
        if len(spec) != 3 or spec[0] not in DISTRIBUTIONS:
            raise UserInputError(f"hpo space {name}={spec}: expected (one of {DISTRIBUTIONS}, low, high)")
        _, low, high = spec
        if not low < high or spec[0] == "loguniform" and low <= 0:
            raise UserInputError(f"hpo space {name}: expected 0 < low < high (low > 0 for loguniform)")

"""DFMGAN's defect-generation sweep (Duan et al. 2023, Table 1): stage 2 over defect types and λ.

Two phases: stage 1 (a StyleGAN2 on the category's defect-free images) once per category and
seed, then stage 2 for every defect type of the category x mode-seeking weight λ, each
starting from that category's stage-1 checkpoint, so the expensive backbone is trained once
and reused by all its stage-2 runs. λ = 0.1 is the paper's setting; the default grid brackets
it (0, 0.05, 0.1, 0.2, 0.5). Tables: KID×10³ and clustered LPIPS per defect type and λ.
"""

from search_spaces.base import (Phase, SweepPlan, TrialSpec, check_extra, check_seeds, dataset_info,
                                pick_categories, validate_plan)
from trainables.errors import UserInputError

LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5)
STAGE1_KEY = "stage1"          # the stage-2 config field that receives the stage-1 checkpoint folder
AXES = ("defect", "lambda_ms", STAGE1_KEY)


def build(data: str = "embedded", categories=None, defects=None, lambdas=None, seeds: int = 1,
          preset: str = "small", extra: dict | None = None) -> SweepPlan:
    """Stage 1 per category x seed, stage 2 per category x defect type x λ x seed; validated."""
    info = dataset_info(data)
    categories = pick_categories(info, categories)
    seed_list = check_seeds(seeds)
    extra = check_extra(extra, AXES)
    lambdas = check_lambdas(lambdas if lambdas else LAMBDAS)
    stage1, stage2 = gan_trials(categories, _defects(info, categories, defects), lambdas, seed_list, extra)
    options = {"categories": list(categories), "defects": sorted(set(defects)) if defects else None,
               "lambdas": list(lambdas), "seeds": seeds, "set": extra}
    plan = SweepPlan("gan", preset, data, info.dataset, options,
                     (Phase("stage1", tuple(stage1)), Phase("stage2", tuple(stage2))))
    return validate_plan(plan)


def check_lambdas(lambdas) -> tuple[float, ...]:
    lambdas = tuple(float(lam) for lam in lambdas)
    if any(lam < 0 for lam in lambdas) or len(set(lambdas)) != len(lambdas):
        raise UserInputError(f"--lambdas {' '.join(f'{lam:g}' for lam in lambdas)}: expected distinct "
                             f"non-negative lambda values")
    return lambdas


def stage2_name(category: str, defect: str, lam: float, seed: int) -> str:
    return f"{category}-{defect}-lambda{lam:g}-s{seed}"


def gan_trials(categories, per_category: dict, lambdas, seed_list, extra: dict) -> tuple[list, list]:
    """Stage-1 trials (one per category x seed) and stage-2 trials (per category x defect type x
    λ x seed, each needing its category's stage 1). The ablation sweep's joined grid plans the same
    trials, names and configs, so their checkpoints are interchangeable (platform/reuse.py)."""
    stage1, stage2 = [], []
    for category in categories:
        for seed in seed_list:
            first = TrialSpec(method="gan_stage1", name=f"{category}-stage1-s{seed}", group="stage 1",
                              category=category, seed=seed, params={"stage": 1},
                              overrides={**extra, "category": category, "seed": seed})
            stage1.append(first)
            for defect in per_category[category]:
                for lam in lambdas:
                    stage2.append(TrialSpec(
                        method="gan_stage2", name=stage2_name(category, defect, lam, seed), group=f"λ={lam:g}",
                        category=category, seed=seed, params={"stage": 2},
                        overrides={**extra, "category": category, "seed": seed, "defect": defect, "lambda_ms": lam},
                        needs=first.name, needs_key=STAGE1_KEY))
    return stage1, stage2


def _defects(info, categories, requested) -> dict[str, tuple[str, ...]]:
    """Defect types per category: all of them, or the requested ones each category has."""
    available = {c: info.defect_types(c) for c in categories}
    if requested:
        unknown = sorted(set(requested) - {d for types in available.values() for d in types})
        if unknown:
            raise UserInputError(f"--defects {' '.join(unknown)}: no such defect type in "
                                 f"{', '.join(categories)}; they have {available}")
        available = {c: tuple(d for d in types if d in requested) for c, types in available.items()}
    empty = [c for c, types in available.items() if not types]
    if empty:
        raise UserInputError(f"--categories {' '.join(empty)}: no defect images of the chosen types to learn; "
                             f"drop them or pick their defect types")
    return available

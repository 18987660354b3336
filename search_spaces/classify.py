"""DFMGAN's downstream classification protocol (Duan et al. 2023, Table 2), per category x partition.

For each category, `train_classifier` splits every defect type's images 1/3 base vs 2/3 test
with a seeded partition, trains stage 2 per defect type on the base set, generates images and
trains a ResNet-34 on them; the paper reports test accuracy on three partitions P1-P3. Stage 1
runs once per category in a first phase and every partition starts from it.
"""

from search_spaces.base import (Phase, SweepPlan, TrialSpec, check_extra, check_seeds, dataset_info,
                                pick_categories, validate_plan)
from search_spaces.gan import STAGE1_KEY
from trainables.errors import UserInputError

AXES = ("partition", "partitions", STAGE1_KEY)


def build(data: str = "embedded", categories=None, partitions: int = 3, seeds: int = 1, preset: str = "small",
          extra: dict | None = None) -> SweepPlan:
    """Stage 1 per category x seed, then the protocol per category x partition x seed; validated."""
    info = dataset_info(data)
    categories = pick_categories(info, categories)
    seed_list = check_seeds(seeds)
    extra = check_extra(extra, AXES)
    if partitions < 1:
        raise UserInputError(f"--partitions {partitions}: expected at least 1")
    few = [c for c in categories if len(info.defect_types(c)) < 2]
    if few:
        raise UserInputError(f"--categories {' '.join(few)}: classification needs at least 2 defect types")
    stage1, runs = [], []
    for category in categories:
        for seed in seed_list:
            first = TrialSpec(method="gan_stage1", name=f"{category}-stage1-s{seed}", group="stage 1",
                              category=category, seed=seed, params={"stage": 1},
                              overrides={**extra, "category": category, "seed": seed})
            stage1.append(first)
            for partition in range(partitions):
                runs.append(TrialSpec(
                    method="classifier", name=f"{category}-partition{partition}-s{seed}", group=f"P{partition + 1}",
                    category=category, seed=seed, params={"partition": partition},
                    overrides={**extra, "category": category, "seed": seed, "partition": partition,
                               "partitions": partitions},
                    needs=first.name, needs_key=STAGE1_KEY))
    options = {"categories": list(categories), "partitions": partitions, "seeds": seeds, "set": extra}
    plan = SweepPlan("classify", preset, data, info.dataset, options,
                     (Phase("stage1", tuple(stage1)), Phase("classify", tuple(runs))))
    return validate_plan(plan)

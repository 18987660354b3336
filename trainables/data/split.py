"""The seeded base / held-back split of a category's defect images (DFMGAN's protocol, docs/dfmgan.md §6).

DFMGAN's classification protocol trains stage 2 on a seeded third ("base") of each defect
type's images and tests on the other two thirds. The joined grid of the ablation sweep uses
the same partition (partition 0 of a seed) twice: stage 2 learns a defect type from its base
images only, and every detector trial of that grid is evaluated on the held-back images plus
all good test images, so no row is tested on an image a GAN it trained from has seen and all
rows share one test set. Indices here are positions in `CategoryData.test` (numpy only).
"""

import dataclasses

import numpy as np

GOOD = "good"


def split_partition(counts: dict[str, int], seed: int, partition: int, base_fraction: float) -> dict:
    """{defect type: (base indices, test indices)}: a seeded permutation per type, round(K·fraction) base.
    Types are drawn in the order of `counts` (sorted defect types, as `CategoryData.defect_types`)."""
    rng = np.random.default_rng([seed, partition])
    split = {}
    for defect, k in counts.items():
        order = rng.permutation(k)
        n_base = min(max(1, round(k * base_fraction)), k - 1)
        split[defect] = (np.sort(order[:n_base]), np.sort(order[n_base:]))
    return split


def holdout_split(test_types, seed: int, base_fraction: float, partition: int = 0) -> dict:
    """{defect type: (base, held back)} as positions in the category's test list."""
    test_types = np.asarray(test_types)
    types = sorted(set(test_types.tolist()) - {GOOD})
    where = {t: np.flatnonzero(test_types == t) for t in types}
    split = split_partition({t: len(where[t]) for t in types}, seed, partition, base_fraction)
    return {t: (where[t][base], where[t][held]) for t, (base, held) in split.items()}


def stage2_indices(test_types, defect: str, seed: int, base_fraction: float) -> np.ndarray:
    """Test-list positions of the images stage 2 learns `defect` from (its base third)."""
    return holdout_split(test_types, seed, base_fraction)[defect][0]


def eval_indices(test_types, seed: int, base_fraction: float) -> np.ndarray:
    """Test-list positions a detector is evaluated on: every good image plus the held-back
    images of every defect type (sorted)."""
    good = np.flatnonzero(np.asarray(test_types) == GOOD)
    held = [held for _, held in holdout_split(test_types, seed, base_fraction).values()]
    return np.sort(np.concatenate([good, *held])).astype(np.int64)


def held_back(data, seed: int, base_fraction: float):
    """A `CategoryData` whose test split is `eval_indices`: the joined grid's evaluation set."""
    keep = eval_indices(data.test_types, seed, base_fraction)
    return dataclasses.replace(data, test=data.test[keep], test_masks=data.test_masks[keep],
                               test_types=tuple(data.test_types[i] for i in keep))

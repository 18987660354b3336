"""The detector's validation split: held-out training images with synthetic anomalies.

MVTec AD has no validation split and its only defective images are the test split's, so a
search that ranks trials on the test split reports a number selected on the data it is
reported on. Here a seeded share (`val_fraction`) of a category's train/good images is held
out of training; each held-out image becomes two validation images: itself (label 0) and
itself with one anomaly made by the trial's own synthesis and appearance source (label 1,
mask M). The anomaly of held-out image k is drawn from a generator seeded by
(val_seed, k): trials with the same source pool (same anomaly_source, source_per_category,
seed) see the same images and masks. No rotation of the normal image (test images are not
rotated) and every sample anomalous (p_anom = 1). Not here: the synthesis itself
(synthesis.py) and the evaluation (train.py); docs/detector.md §5.3 says what the split
is and is not.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from trainables.detector.synthesis import AnomalySynthesizer, SourcePool, SynthesisParams
from trainables.errors import UserInputError

_SPLIT, _ANOMALY = 7919, 104723   # separate the split's stream from the anomalies' (and from training's)
MASK_TRIES = 100                  # Perlin redraws before a held-out image stays without anomaly


@dataclass(frozen=True)
class ValidationSet:
    """Labelled images made from the held-out training images."""
    images: np.ndarray       # uint8 [V, S, S, 3]: each held-out image clean, then with its anomaly
    masks: np.ndarray        # uint8 [V, S, S] in {0, 1}
    labels: np.ndarray       # int64 [V]
    held: tuple[int, ...]    # indices into train/good (sorted) of the held-out images


def split_train(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) of n train/good images, both sorted; `fraction`
    of them (rounded, at least 1, at most n − 1) held out, chosen by `seed`. 0 = none."""
    if fraction == 0:
        return np.arange(n), np.arange(0)
    if n < 2:
        raise UserInputError(f"val_fraction={fraction}: train/good holds {n} image(s); expected at least 2 "
                             "to hold some out (or val_fraction=0)")
    n_held = min(max(1, round(fraction * n)), n - 1)
    order = np.random.default_rng([seed, _SPLIT]).permutation(n)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def validation_set(train: np.ndarray, held: np.ndarray, kind: str, pool: SourcePool, params: SynthesisParams,
                   seed: int) -> ValidationSet:
    """The validation set of the held-out images `train[held]` (see the module docstring)."""
    params = dataclasses.replace(params, p_anom=1.0, rot_p=0.0, mask_tries=MASK_TRIES)
    images, masks, labels = [], [], []
    for k in held:
        image = train[k]
        # a synthesizer over this one image: sample() picks it and computes its foreground
        I, I_a, M, y, _ = AnomalySynthesizer(image[None], kind, pool, params).sample(
            np.random.default_rng([seed, _ANOMALY, int(k)]))
        images += [image, (I_a * 255 + 0.5).astype(np.uint8)]  # I_a is exactly the image outside M
        masks += [np.zeros(M.shape, np.uint8), M.astype(np.uint8)]
        labels += [0, int(y)]
    if not any(labels):
        raise UserInputError(f"val_fraction: no anomaly could be synthesised on the {len(held)} held-out image(s) "
                             f"(the masks missed the foreground {MASK_TRIES} times each); expected a larger "
                             "val_fraction, or fg_aware=false")
    return ValidationSet(np.stack(images), np.stack(masks), np.asarray(labels, np.int64),
                         tuple(int(k) for k in held))

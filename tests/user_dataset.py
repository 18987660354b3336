"""A user's own dataset on disk, in the MVTec AD layout, for the sweep tests.

Categories are named as the user likes (`gizmo` is not an embedded category; `weave` is, so a
worker that silently fell back to the embedded set would train on other pixels). Images are a
smooth, category-coloured texture with noise; each defect type is a darker or brighter blob
with its pixel mask. Deterministic for a given seed.
"""

from pathlib import Path

import numpy as np

from conftest import write_image


def write_user_dataset(root: Path, categories=("gizmo", "weave"), defects=("dent", "smudge"), size: int = 64,
                       n_train: int = 12, n_good_test: int = 4, n_per_defect: int = 3, seed: int = 7) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c, category in enumerate(categories):
        colour = rng.uniform(40, 200, 3)

        def good() -> np.ndarray:
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (3 + c) * xx + phase) * np.cos(2 * np.pi * 2 * yy)
            image = colour + 30 * wave[..., None] + rng.normal(0, 6, (size, size, 3))
            return np.clip(image, 0, 255).astype(np.uint8)

        for k in range(n_train):
            write_image(root / category / "train" / "good" / f"{k:03d}.png", good())
        for k in range(n_good_test):
            write_image(root / category / "test" / "good" / f"{k:03d}.png", good())
        for d, defect in enumerate(defects):
            for k in range(n_per_defect):
                cy, cx = rng.uniform(0.25, 0.75, 2)
                mask = ((yy - cy) / 0.12) ** 2 + ((xx - cx) / 0.08) ** 2 <= 1
                image = good().astype(float)
                image[mask] = image[mask] * (0.4 if d % 2 == 0 else 1.0) + (0 if d % 2 == 0 else 90)
                write_image(root / category / "test" / defect / f"{k:03d}.png",
                            np.clip(image, 0, 255).astype(np.uint8))
                write_image(root / category / "ground_truth" / defect / f"{k:03d}_mask.png",
                            (mask * 255).astype(np.uint8))
    return root

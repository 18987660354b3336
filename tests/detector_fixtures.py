"""Small MVTec-layout datasets for the detector tests: one texture and two object categories.

Objects are a bright disc on a dark noisy background, so the foreground is well defined;
the texture is stripes. Defects are dark squares with their masks. `garbage_tests=True`
writes every test image and mask as bytes no image reader accepts, so any code path that
opens one fails loudly.
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
CATEGORIES = {"carpet": "texture", "disc": "object", "blob": "object"}  # carpet: an MVTec texture name


def _image(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    if kind == "texture":
        gray = 0.5 + 0.4 * np.sin(40 * x + rng.uniform(0, 6))
        rgb = gray[..., None] * np.array([200, 150, 100]) + rng.normal(0, 5, (size, size, 3))
    else:
        disc = np.hypot(x - rng.uniform(-0.03, 0.03), y) < 0.3
        rgb = np.where(disc[..., None], [200, 180, 60], [30, 30, 40]) + rng.normal(0, 6, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write(path: Path, array: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        path.write_bytes(b"not an image")
    else:
        Image.fromarray(array).save(path)


def make_detector_dataset(root: Path, size: int = SIZE, n_train: int = 6, n_test: int = 3,
                          garbage_tests: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for name, kind in CATEGORIES.items():
        category = root / name
        for k in range(n_train):
            _write(category / "train" / "good" / f"{k:03d}.png", _image(kind, rng, size))
        for k in range(n_test):
            _write(category / "test" / "good" / f"{k:03d}.png", None if garbage_tests else _image(kind, rng, size))
            image, mask = _image(kind, rng, size), np.zeros((size, size), np.uint8)
            top = int(rng.integers(size // 3, size // 2))
            image[top:top + 4, top:top + 4] = 0
            mask[top:top + 4, top:top + 4] = 255
            _write(category / "test" / "dent" / f"{k:03d}.png", None if garbage_tests else image)
            _write(category / "ground_truth" / "dent" / f"{k:03d}_mask.png", None if garbage_tests else mask)
    return root

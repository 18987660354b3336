"""Appearance-source textures for anomaly synthesis: DTD when present, else procedural.

The detector's `dtd` anomaly source draws textures from the Describable Textures Dataset
through `torchvision.datasets.DTD`. DTD cannot be downloaded everywhere (not on machines
without internet), so the bank falls back to procedurally generated textures (stripes,
checks, dots, cells, waves, noise) and records `source="procedural"`, which every run logs
as `texture_source`. Asking for DTD explicitly when it is absent is an error, not a silent
fallback.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data import procedural as P
from trainables.errors import UserInputError


@dataclass(frozen=True)
class TextureBank:
    images: np.ndarray   # uint8 [K, S, S, 3]
    source: str          # "dtd" | "procedural"


def load_texture_bank(source: str = "auto", dtd_root: str | os.PathLike | None = None,
                      size: int = 128, count: int = 256, seed: int = 0,
                      download: bool = False) -> TextureBank:
    """`auto`: DTD if found under `dtd_root`, else procedural; `dtd`: DTD or an error."""
    if source not in ("auto", "dtd", "procedural"):
        raise UserInputError(f"texture source {source!r}: expected auto, dtd or procedural")
    if source != "procedural" and (dtd_root or download):
        images = _load_dtd(Path(dtd_root or Path.home() / ".cache" / "dtd"), size, count, seed, download)
        if images is not None:
            return TextureBank(images, "dtd")
    if source == "dtd":
        raise UserInputError(
            f"texture source dtd: DTD not found under {dtd_root or '(no --dtd-root given)'}; expected "
            "torchvision's DTD layout (<root>/dtd/images/<class>/*.jpg). Download it on a machine "
            "with internet (torchvision.datasets.DTD(root, download=True)) or use the procedural bank")
    return TextureBank(procedural_textures(size, count, seed), "procedural")


def procedural_textures(size: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` textures cycling through six families, each with random colours. [K, S, S, 3]"""
    rng = np.random.default_rng([seed, 7919])
    families = (_stripes, _checks, _dots, _cells, _waves, _noise)
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        gray = families[k % len(families)](rng, size)
        out[k] = np.clip(P.colorize(gray, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)), 0, 255)
    return out


def _load_dtd(root: Path, size: int, count: int, seed: int, download: bool) -> np.ndarray | None:
    from torchvision.datasets import DTD

    try:
        dataset = DTD(str(root), split="train", download=download)
    except (RuntimeError, OSError):
        return None
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    return np.stack([np.asarray(dataset[int(k)][0].convert("RGB").resize((size, size), Image.BILINEAR))
                     for k in picks])


def _stripes(rng, size):
    y, x = P.coords(size)
    angle = rng.uniform(0, np.pi)
    return 0.5 + 0.5 * np.sign(np.sin(rng.uniform(6, 30) * (np.cos(angle) * x + np.sin(angle) * y)))


def _checks(rng, size):
    y, x = P.coords(size)
    f = rng.uniform(3, 12)
    return ((np.floor(f * x) + np.floor(f * y)) % 2).astype(float)


def _dots(rng, size):
    y, x = P.coords(size)
    f = rng.uniform(4, 12)
    return (np.hypot((x * f) % 1 - 0.5, (y * f) % 1 - 0.5) < rng.uniform(0.15, 0.4)).astype(float)


def _cells(rng, size):
    y, x = P.coords(size)
    seeds = rng.uniform(-1, 1, (int(rng.integers(8, 30)), 2))
    distance = np.min(np.hypot(x[..., None] - seeds[:, 0], y[..., None] - seeds[:, 1]), axis=-1)
    return distance / max(distance.max(), 1e-8)


def _waves(rng, size):
    y, x = P.coords(size)
    return 0.5 + 0.5 * np.sin(rng.uniform(4, 20) * x + 3 * np.sin(rng.uniform(2, 8) * y))


def _noise(rng, size):
    return P.fractal_noise(rng, size, int(rng.integers(2, 8)), 4)

"""Generation with a trained DFMGAN (docs/dfmgan.md §4): (defect image, mask, defect-free twin) triplets.

The twin comes from the same object code z and the same constant noise with the defect
branch cut off (the reference's `fix_residual_to_zero`), so the two differ only where the
residual features were added. Also: a picture grid, the pictures dict a final checkpoint
carries, and mask statistics that say whether the masks are plausible (coverage) and whether
the defect images differ from their twins inside the mask rather than outside.
"""

import os
from pathlib import Path

import numpy as np
import torch

from trainables.pictures import grid

TRIPLETS = "triplets"            # the final stage-2 checkpoint's key, and the file stem beside it
TRIPLETS_FILE = f"{TRIPLETS}.npz"


def save_triplets(folder: str | os.PathLike, triplets: dict) -> Path:
    """`<folder>/triplets.npz`: image, mask, good (uint8), beside the checkpoint they came from,
    so a detector reads the bank without loading the GAN."""
    path = Path(folder) / TRIPLETS_FILE
    arrays = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in triplets.items()}
    np.savez(path, **arrays)
    return path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in ≈[-1, 1] -> uint8 [N, H, W, C], the reference's (x·127.5 + 128) clamped, truncated."""
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate_triplets(G, n: int, seed: int = 0, batch: int = 16, device="cpu",
                      truncation_psi: float = 1.0) -> dict[str, np.ndarray]:
    """n triplets from G (use G_ema): image uint8 [n, R, R, 3], mask {0,1} uint8 [n, R, R],
    good uint8 [n, R, R, 3]; z from `seed`, z_defect drawn after all z, noise 'const'."""
    was_training = G.training
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn(n, G.z_dim, generator=gen)
    zd_all = torch.randn(n, G.z_dim, generator=gen)
    images, masks, goods = [], [], []
    for i in range(0, n, batch):
        z, zd = z_all[i:i + batch].to(device), zd_all[i:i + batch].to(device)
        img, mask = G(z, zd, truncation_psi, noise_mode="const")
        good, _ = G(z, None, noise_mode="const")
        images.append(to_uint8(img))
        goods.append(to_uint8(good))
        masks.append((mask[:, 0] >= G.synthesis.mask_threshold).to(torch.uint8).cpu().numpy())
    G.train(was_training)
    return {"image": np.concatenate(images), "mask": np.concatenate(masks), "good": np.concatenate(goods)}


def triplet_grid(triplets: dict[str, np.ndarray], n: int = 16, per_row: int = 4) -> np.ndarray:
    """Rows of (defect-free twin | mask | defect image) triplets. uint8 [H', W', 3]"""
    tiles = []
    for k in range(min(n, len(triplets["image"]))):
        tiles += [triplets["good"][k], triplets["mask"][k] * 255, triplets["image"][k]]
    return grid(tiles, ncols=3 * per_row)


def triplet_pictures(triplets: dict[str, np.ndarray], grid_n: int = 16) -> dict[str, np.ndarray]:
    """The `pictures` of a final checkpoint: the grid plus every triplet as three PNG stems."""
    pictures = {"triplets_grid": triplet_grid(triplets, grid_n)}
    for k in range(len(triplets["image"])):
        pictures[f"triplet_{k:03d}_image"] = triplets["image"][k]
        pictures[f"triplet_{k:03d}_mask"] = np.repeat(triplets["mask"][k][..., None] * 255, 3, axis=2)
        pictures[f"triplet_{k:03d}_good"] = triplets["good"][k]
    return pictures


def mask_statistics(triplets: dict[str, np.ndarray], lo: float = 0.005, hi: float = 0.5) -> dict[str, float]:
    """Share of masks covering [lo, hi] of the image, and mean |defect − twin| (0-255, averaged
    over channels) inside vs outside the masks."""
    masks = triplets["mask"].astype(bool)
    coverage = masks.mean(axis=(1, 2))
    diff = np.abs(triplets["image"].astype(np.float64) - triplets["good"].astype(np.float64)).mean(-1)
    inside = round(float(diff[masks].mean()), 4) if masks.any() else "unavailable"      # no mask pixel at all
    outside = round(float(diff[~masks].mean()), 4) if (~masks).any() else "unavailable"
    return {"mask_coverage_ok": float(((coverage >= lo) & (coverage <= hi)).mean()),
            "mask_coverage_mean": round(float(coverage.mean()), 5),
            "mask_coverage_median": round(float(np.median(coverage)), 5),
            "diff_inside_mask": inside, "diff_outside_mask": outside}

"""Pictures for people: picture grids and PNG files.

Trainers put uint8 [H, W, 3] pictures in their final checkpoint under "pictures"; whoever
persists a checkpoint (the CLI, the Ray adapter) writes them as PNGs with `save_pictures`.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_pictures(pictures: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write `{stem: uint8 [H, W, 3] (or [H, W]) array or tensor}` as `<out_dir>/<stem>.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, picture in pictures.items():
        array = picture.cpu().numpy() if isinstance(picture, torch.Tensor) else np.asarray(picture)
        assert array.dtype == np.uint8, f"picture {stem}: expected uint8, got {array.dtype}"
        path = out_dir / f"{stem}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def grid(images, ncols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized uint8 images ([H, W, 3] or [H, W]) row by row. [rows*H, ncols*W, 3]"""
    images = [_rgb(np.asarray(image)) for image in images]
    assert images, "grid of no images"
    h, w, _ = images[0].shape
    rows = -(-len(images) // ncols)
    canvas = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, ncols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return canvas


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image

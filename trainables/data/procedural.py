"""Procedural image primitives: value noise, colour ramps and shapes, in numpy.

Shared by the embedded dataset generator and the procedural texture bank. Everything takes
a `numpy.random.Generator`, so the callers' outputs are a pure function of their seed.
"""

import numpy as np


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] on a `cells`×`cells` lattice, bicubic-smoothed. [S, S]"""
    lattice = rng.random((cells + 3, cells + 3))
    t = np.linspace(0, cells, size, endpoint=False) + 1.0
    i = np.floor(t).astype(int)
    f = t - i
    w = _cubic_weights(f)  # [S, 4]
    rows = sum(w[:, k, None] * lattice[i + k - 1] for k in range(4))  # [S, cells+3]
    out = sum(w[None, :, k] * rows[:, i + k - 1] for k in range(4))  # [S, S]
    out -= out.min()
    return out / max(out.max(), 1e-8)


def fractal_noise(rng: np.random.Generator, size: int, base_cells: int = 4,
                  octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Sum of value-noise octaves, normalised to [0, 1]. [S, S]"""
    total = np.zeros((size, size))
    amplitude = 1.0
    for octave in range(octaves):
        total += amplitude * value_noise(rng, size, base_cells * 2 ** octave)
        amplitude *= persistence
    total -= total.min()
    return total / max(total.max(), 1e-8)


def colorize(gray: np.ndarray, low, high) -> np.ndarray:
    """Map a [0, 1] field onto the line between two RGB colours. [S, S, 3] float in [0, 255]"""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return low + gray[..., None] * (high - low)


def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]. (y, x), each [S, S]"""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t, indexing="ij")


def polygon_mask(size: int, vertices: np.ndarray) -> np.ndarray:
    """Inside-test of a simple polygon given in [-1, 1] coordinates. [S, S] bool"""
    y, x = coords(size)
    inside = np.zeros((size, size), bool)
    n = len(vertices)
    for k in range(n):
        (x0, y0), (x1, y1) = vertices[k], vertices[(k + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        x_at = (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-12, y1 - y0) + x0
        inside ^= crosses & (x < x_at)
    return inside


def stroke_mask(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Pixels within `width` (in [-1, 1] units) of a polyline through `points`. [S, S] bool"""
    y, x = coords(size)
    mask = np.zeros((size, size), bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        mask |= (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= width ** 2
    return mask


def _cubic_weights(f: np.ndarray) -> np.ndarray:
    """Catmull-Rom weights for the 4 lattice points around fractional offset f. [S, 4]"""
    f2, f3 = f * f, f * f * f
    return np.stack([(-f3 + 2 * f2 - f) / 2, (3 * f3 - 5 * f2 + 2) / 2,
                     (-3 * f3 + 4 * f2 + f) / 2, (f3 - f2) / 2], axis=1)

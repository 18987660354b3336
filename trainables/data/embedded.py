"""The embedded dataset: a deterministic, procedurally generated stand-in for MVTec AD.

It writes the MVTec AD folder layout (`<category>/{train/good, test/<type>,
ground_truth/<type>/<name>_mask.png}`) for 15 small synthetic categories, 5 texture-like
and 10 objects on a background, each with 2-4 defect types. Defects are hard-edged, so a
mask is exactly the set of pixels its defect changed. Names are deliberately unlike MVTec
AD's, and every run on it records `dataset=embedded`: no table built on it can pass for a
paper result. It is what everything runs and is tested on when MVTec AD is absent.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data import procedural as P

EMBEDDED_VERSION = 1  # bump when the generator's output changes; it keys the on-disk cache
IMAGE_SIZE = 128
N_TRAIN = 80
N_TEST_GOOD = 12
N_TEST_PER_DEFECT = 8

# category -> (kind, defect types)
EMBEDDED_CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "weave": ("texture", ("scratch", "hole", "stain")),
    "marble": ("texture", ("crack", "stain")),
    "mesh": ("texture", ("hole", "scratch", "contamination")),
    "suede": ("texture", ("stain", "cut")),
    "terrazzo": ("texture", ("crack", "hole", "contamination")),
    "washer": ("object", ("scratch", "missing", "stain")),
    "bolt": ("object", ("scratch", "hole")),
    "button": ("object", ("crack", "stain", "missing")),
    "gear": ("object", ("missing", "contamination")),
    "vial": ("object", ("crack", "contamination", "stain")),
    "chip": ("object", ("scratch", "missing", "contamination", "stain")),
    "ring": ("object", ("missing", "scratch")),
    "tablet": ("object", ("crack", "stain", "hole")),
    "hexnut": ("object", ("scratch", "hole", "missing")),
    "lens": ("object", ("stain", "scratch", "crack")),
}


def embedded_root(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The embedded dataset's folder, generated on first use (safe under concurrent callers)."""
    cache = Path(cache_dir or os.environ.get("DEFECT_SWEEPS_CACHE")
                 or Path.home() / ".cache" / "defect-sweeps")
    root = cache / f"embedded-v{EMBEDDED_VERSION}-seed{seed}"
    if (root / ".complete").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=cache))
    try:
        generate_embedded(staging, seed=seed)
        (staging / ".complete").write_text(f"embedded dataset v{EMBEDDED_VERSION}, seed {seed}\n")
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first: its copy is byte-identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def generate_embedded(out: str | os.PathLike, seed: int = 0, size: int = IMAGE_SIZE,
                      categories: tuple[str, ...] | None = None) -> Path:
    """Write the categories (default: all 15) under `out`; bytes depend only on (seed, size)."""
    out = Path(out)
    for index, (name, (kind, defects)) in enumerate(EMBEDDED_CATEGORIES.items()):
        if categories is not None and name not in categories:
            continue
        rng = np.random.default_rng([seed, index])
        style = _category_style(name, rng)
        for k in range(N_TRAIN):
            image, _ = _render_good(name, kind, style, rng, size)
            _write_png(out / name / "train" / "good" / f"{k:03d}.png", image)
        for k in range(N_TEST_GOOD):
            image, _ = _render_good(name, kind, style, rng, size)
            _write_png(out / name / "test" / "good" / f"{k:03d}.png", image)
        for defect in defects:
            for k in range(N_TEST_PER_DEFECT):
                image, foreground = _render_good(name, kind, style, rng, size)
                image, mask = _add_defect(defect, image, foreground, style, rng)
                _write_png(out / name / "test" / defect / f"{k:03d}.png", image)
                _write_png(out / name / "ground_truth" / defect / f"{k:03d}_mask.png",
                           mask.astype(np.uint8) * 255)
    return out


# ---------------------------------------------------------------- normal appearance

def _category_style(name: str, rng: np.random.Generator) -> dict:
    """Per-category constants: colours and shape parameters shared by all its images."""
    hue = rng.random(3)
    return {
        "fg": 60 + 170 * hue,
        "bg": 20 + 50 * rng.random(3),
        "accent": 255 - 200 * hue,
        "teeth": int(rng.integers(8, 14)),
    }


def _render_good(name, kind, style, rng, size):
    """One defect-free image (uint8 [S, S, 3]) and its foreground (bool [S, S])."""
    if kind == "texture":
        image = _TEXTURES[name](rng, size, style)
        foreground = np.ones((size, size), bool)
    else:
        image, foreground = _render_object(name, rng, size, style)
    return np.clip(image, 0, 255).astype(np.uint8), foreground


def _texture_weave(rng, size, style):
    y, x = P.coords(size)
    freq = 24 + rng.uniform(-1, 1)
    phase = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(freq * x + phase[0]) * (np.sin(freq / 2 * y) > 0)
    weft = np.sin(freq * y + phase[1]) * (np.sin(freq / 2 * y) <= 0)
    gray = 0.5 + 0.35 * (warp + weft) + 0.15 * P.fractal_noise(rng, size, 8, 2)
    return P.colorize(np.clip(gray, 0, 1), style["fg"] * 0.5, style["fg"])


def _texture_marble(rng, size, style):
    y, x = P.coords(size)
    turbulence = P.fractal_noise(rng, size, 3, 4)
    angle = rng.uniform(0, np.pi)
    veins = np.abs(np.sin(6 * (np.cos(angle) * x + np.sin(angle) * y) + 6 * turbulence)) ** 0.3
    return P.colorize(veins, (90, 90, 100), (235, 232, 225))


def _texture_mesh(rng, size, style):
    y, x = P.coords(size)
    pitch = 0.25 + rng.uniform(-0.01, 0.01)
    shift = rng.uniform(0, pitch, 2)
    lines = (np.abs(((x + shift[0]) % pitch) - pitch / 2) < 0.03) | \
            (np.abs(((y + shift[1]) % pitch) - pitch / 2) < 0.03)
    gray = 0.15 + 0.7 * lines + 0.1 * P.fractal_noise(rng, size, 8, 2)
    return P.colorize(gray, style["bg"], style["fg"])


def _texture_suede(rng, size, style):
    gray = 0.3 + 0.4 * P.fractal_noise(rng, size, 6, 4, 0.6)
    return P.colorize(gray, (70, 45, 30), (190, 140, 100))


def _texture_terrazzo(rng, size, style):
    image = P.colorize(0.4 + 0.2 * P.fractal_noise(rng, size, 4, 3), (150, 150, 145), (215, 212, 205))
    for _ in range(int(rng.integers(25, 35))):
        centre = rng.uniform(-1, 1, 2)
        radius = rng.uniform(0.03, 0.08)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
        chip = P.polygon_mask(size, centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1))
        image[chip] = rng.choice([style["accent"], style["fg"], (60, 60, 60)])
    return image


_TEXTURES = {"weave": _texture_weave, "marble": _texture_marble, "mesh": _texture_mesh,
             "suede": _texture_suede, "terrazzo": _texture_terrazzo}


def _render_object(name, rng, size, style):
    """A shaded object on a noisy background: (float image [S, S, 3], foreground [S, S])."""
    y, x = P.coords(size)
    centre = rng.uniform(-0.06, 0.06, 2)
    turn = rng.uniform(0, 2 * np.pi)
    scale = rng.uniform(0.95, 1.05)
    u = (np.cos(turn) * (x - centre[0]) + np.sin(turn) * (y - centre[1])) / scale
    v = (-np.sin(turn) * (x - centre[0]) + np.cos(turn) * (y - centre[1])) / scale
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    hexagon = np.cos(np.pi / 6) / np.cos((theta % (np.pi / 3)) - np.pi / 6)
    shapes = {
        "washer": (r < 0.6) & (r > 0.28),
        "bolt": (r < 0.55 * hexagon),
        "button": (r < 0.6) & ~_holes(u, v, 0.16, 0.07),
        "gear": r < np.where(np.sin(style["teeth"] * theta) > 0, 0.62, 0.52),
        "vial": (np.abs(u) < 0.22) & (np.abs(v) < 0.65),
        "chip": ((np.abs(u) < 0.45) & (np.abs(v) < 0.45))
                | ((np.abs(u) < 0.6) & (np.abs(v) < 0.38) & (np.abs((v * 5) % 1 - 0.5) < 0.2)),
        "ring": (r < 0.62) & (r > 0.42),
        "tablet": ((u / 0.62) ** 2 + (v / 0.42) ** 2 < 1),
        "hexnut": (r < 0.6 * hexagon) & (r > 0.22),
        "lens": r < 0.58,
    }
    foreground = shapes[name]
    background = P.colorize(P.fractal_noise(rng, size, 4, 3), style["bg"] * 0.7, style["bg"] * 1.3)
    shading = 0.75 + 0.25 * np.clip(1 - (u + 0.3) ** 2 - (v + 0.3) ** 2, 0, 1)
    if name == "lens":
        shading = 0.5 + 0.5 * np.clip(1 - r / 0.58, 0, 1) ** 0.5
    surface = P.colorize(0.85 + 0.15 * P.fractal_noise(rng, size, 8, 2), style["fg"] * 0.8, style["fg"])
    surface *= shading[..., None]
    if name == "tablet":
        surface[np.abs(u) < 0.02] *= 0.7  # the score line
    image = np.where(foreground[..., None], surface, background)
    return image, foreground


def _holes(u, v, offset, radius):
    return sum(((u - du) ** 2 + (v - dv) ** 2) < radius ** 2
               for du in (-offset, offset) for dv in (-offset, offset)).astype(bool)


# ---------------------------------------------------------------- defects

def _add_defect(defect, image, foreground, style, rng, tries: int = 20):
    """Apply one defect; returns (image uint8 [S, S, 3], mask bool [S, S]) with mask == changed pixels."""
    size = image.shape[0]
    for _ in range(tries):
        mask, colour = _DEFECTS[defect](rng, size, image, foreground, style)
        if defect != "missing":
            mask &= _eroded(foreground)
        out = image.copy()
        out[mask] = np.clip(colour[mask] if colour.ndim == 3 else colour, 0, 255)
        changed = np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 12
        mask &= changed
        out = np.where(mask[..., None], out, image)
        if mask.sum() >= 16 and mask.mean() < 0.2:
            return out, mask
    raise AssertionError(f"could not place a {defect} defect")  # internal: generator bug


def _anchor(rng, foreground):
    """A point in [-1, 1] coordinates inside the foreground (away from its border)."""
    for margin in (6, 3, 0):  # thin objects (a ring) have no pixel 6 steps from their border
        ys, xs = np.nonzero(_eroded(foreground, margin))
        if len(ys):
            break
    k = rng.integers(len(ys))
    size = foreground.shape[0]
    return np.array([(xs[k] + 0.5) / size * 2 - 1, (ys[k] + 0.5) / size * 2 - 1])


def _contrast(image, mask, rng):
    """A colour far from the image's mean colour under the mask."""
    mean = image[mask].mean(axis=0) if mask.any() else image.reshape(-1, 3).mean(axis=0)
    return np.where(mean > 128, mean * rng.uniform(0.15, 0.4), 255 - (255 - mean) * rng.uniform(0.1, 0.3))


def _defect_scratch(rng, size, image, foreground, style):
    start = _anchor(rng, foreground)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(0.3, 0.6)
    bend = rng.normal(scale=0.08, size=2)
    points = np.stack([start, start + direction * length / 2 + bend, start + direction * length])
    mask = P.stroke_mask(size, points, rng.uniform(0.018, 0.03))
    return mask, _contrast(image, mask, rng)


def _defect_crack(rng, size, image, foreground, style):
    points = [_anchor(rng, foreground)]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(6, 10))):
        heading += rng.normal(scale=0.6)
        points.append(points[-1] + 0.07 * np.array([np.cos(heading), np.sin(heading)]))
    mask = P.stroke_mask(size, np.array(points), rng.uniform(0.015, 0.025))
    return mask, np.full(3, 15.0)


def _defect_hole(rng, size, image, foreground, style):
    y, x = P.coords(size)
    centre = _anchor(rng, foreground)
    radii = rng.uniform(0.05, 0.12, 2)
    mask = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 < 1
    return mask, np.full(3, 8.0)


def _defect_stain(rng, size, image, foreground, style):
    y, x = P.coords(size)
    centre = _anchor(rng, foreground)
    radius = rng.uniform(0.1, 0.2)
    blob = np.hypot(x - centre[0], y - centre[1]) / radius + 0.6 * P.value_noise(rng, size, 6)
    mask = blob < 1.0
    tint = rng.choice([(150, 90, 30), (40, 70, 150), (120, 140, 40)])
    return mask, 0.4 * image + 0.6 * np.asarray(tint, float)


def _defect_cut(rng, size, image, foreground, style):
    start = _anchor(rng, foreground)
    angle = rng.uniform(0, 2 * np.pi)
    end = start + rng.uniform(0.25, 0.45) * np.array([np.cos(angle), np.sin(angle)])
    mask = P.stroke_mask(size, np.stack([start, end]), rng.uniform(0.03, 0.045))
    return mask, 0.3 * image


def _defect_contamination(rng, size, image, foreground, style):
    y, x = P.coords(size)
    centre = _anchor(rng, foreground)
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(3, 7))):
        spot = centre + rng.normal(scale=0.1, size=2)
        mask |= np.hypot(x - spot[0], y - spot[1]) < rng.uniform(0.02, 0.045)
    return mask, np.asarray(style["accent"], float)


def _defect_missing(rng, size, image, foreground, style):
    """A bite out of the object: its pixels show the background colour instead."""
    y, x = P.coords(size)
    centre = _anchor(rng, foreground)
    bite = np.hypot(x - centre[0], y - centre[1]) < rng.uniform(0.12, 0.2)
    mask = bite & foreground
    return mask, np.asarray(style["bg"], float)


_DEFECTS = {"scratch": _defect_scratch, "crack": _defect_crack, "hole": _defect_hole,
            "stain": _defect_stain, "cut": _defect_cut, "contamination": _defect_contamination,
            "missing": _defect_missing}


def _eroded(mask, steps: int = 1):
    for _ in range(steps):
        mask = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    return mask


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")

"""The embedded dataset: a deterministic, procedurally generated stand-in for MVTec AD.

It writes the MVTec AD folder layout (`<category>/{train/good, test/<type>,
ground_truth/<type>/<name>_mask.png}`) for 15 small synthetic categories, 5 textures and 10
objects on a background, each with 2-4 defect types. Like MVTec AD (Bergmann et al., CVPR
2019) the good images vary a little (texture phase and warp, object pose, lighting, colour,
sensor noise) and the defects are small and often low-contrast: thin scratches and cracks,
stains, contamination, missing parts, misprints. Every test image is rendered from its own
seed together with its defect-free twin; a defect image equals its twin outside the mask,
and the mask is the set of pixels the defect changed (gaps closed). Names are deliberately
unlike MVTec AD's, and every run on it records `dataset=embedded`: no table built on it can
pass for a paper result. It is what everything runs and is tested on when MVTec AD is absent.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from trainables.data import procedural as P

EMBEDDED_VERSION = 3  # bump when the generator's output changes; it keys the on-disk cache
IMAGE_SIZE = 128
N_TRAIN = 80
N_TEST_GOOD = 12
N_TEST_PER_DEFECT = 8

# category -> (kind, defect types)
EMBEDDED_CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "weave": ("texture", ("thread", "hole", "stain")),
    "marble": ("texture", ("crack", "stain", "scratch")),
    "mesh": ("texture", ("broken", "bent", "contamination")),
    "suede": ("texture", ("cut", "stain", "fold")),
    "terrazzo": ("texture", ("crack", "hole", "contamination")),
    "washer": ("object", ("scratch", "missing", "stain")),
    "bolt": ("object", ("scratch", "hole", "thread")),
    "button": ("object", ("crack", "stain", "missing")),
    "gear": ("object", ("missing", "contamination", "scratch")),
    "vial": ("object", ("crack", "contamination", "stain")),
    "chip": ("object", ("scratch", "missing", "contamination", "misprint")),
    "ring": ("object", ("missing", "scratch", "contamination")),
    "tablet": ("object", ("crack", "stain", "misprint")),
    "hexnut": ("object", ("scratch", "hole", "missing")),
    "lens": ("object", ("stain", "scratch", "crack")),
}

# A defect changes a pixel when it moves it by more than this many grey levels (of 255),
# measured before sensor noise; smaller changes are dropped so the mask stays exact.
MASK_THRESHOLD = 4.0
# Defect severity, calibrated so that the detector's `small` preset (64 px, 15 epochs) finds
# most but not all defects: line widths and spot radii are multiplied by WIDTH (pixels at
# 128 px), contrasts by CONTRAST (capped below full replacement).
WIDTH = 1.8
CONTRAST = 1.5
# Per category, a further contrast multiplier for its defects (the pixel change is scaled). Set
# from the full model's image AUROC on the `small` preset at 15 epochs (README, "The embedded
# dataset"): these categories' defects were beyond it at the global severity.
SEVERITY = {"lens": 1.8, "gear": 1.6, "ring": 1.6, "vial": 1.6, "suede": 1.25, "bolt": 1.2}


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
    for name, (_, defects) in EMBEDDED_CATEGORIES.items():
        if categories is not None and name not in categories:
            continue
        for k in range(N_TRAIN):
            image, _, _ = render_sample(name, "train", k, seed, size)
            _write_png(out / name / "train" / "good" / f"{k:03d}.png", image)
        for k in range(N_TEST_GOOD):
            image, _, _ = render_sample(name, "good", k, seed, size)
            _write_png(out / name / "test" / "good" / f"{k:03d}.png", image)
        for defect in defects:
            for k in range(N_TEST_PER_DEFECT):
                image, mask, _ = render_sample(name, defect, k, seed, size)
                _write_png(out / name / "test" / defect / f"{k:03d}.png", image)
                _write_png(out / name / "ground_truth" / defect / f"{k:03d}_mask.png",
                           mask.astype(np.uint8) * 255)
    return out


def render_sample(category: str, kind: str, index: int, seed: int = 0, size: int = IMAGE_SIZE):
    """One image of `category`: kind is "train", "good" or one of its defect types.

    Returns (image uint8 [S, S, 3], mask bool [S, S], defect-free twin uint8 [S, S, 3]); the
    twin is the same scene (pose, light, noise) without the defect, so image == twin outside
    the mask. A pure function of its arguments.
    """
    names = list(EMBEDDED_CATEGORIES)
    family, defects = EMBEDDED_CATEGORIES[category]
    slot = {"train": 0, "good": 1}.get(kind)
    if slot is None:
        slot = 2 + defects.index(kind)
    cat = names.index(category)
    style = _category_style(category, np.random.default_rng([seed, cat]))
    rng = np.random.default_rng([seed, cat, slot, index])
    scene_seed = int(rng.integers(2 ** 62))
    draw = _TEXTURES[category] if family == "texture" else _OBJECTS[category]

    def render(edit=None):  # the same scene every call; `edit` changes its geometry
        scene = np.random.default_rng(scene_seed)
        if family == "texture":
            image, meta = draw(scene, size, style, edit)
            foreground = np.ones((size, size))
        else:
            image, foreground, meta = _render_object(draw, scene, size, style, edit)
        return _light(scene, image), foreground, meta

    clean, foreground, meta = render()
    noise = rng.normal(0, style["noise"], clean.shape)
    image, mask = clean, np.zeros((size, size), bool)
    if slot >= 2:
        image, mask = _add_defect(kind, rng, clean, foreground, meta, render, style)
    return _finish(image, noise), mask, _finish(clean, noise)


def _finish(image, noise):
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- normal appearance

def _category_style(name: str, rng: np.random.Generator) -> dict:
    """Per-category constants: colours and shape parameters shared by all its images."""
    hue = rng.random(3)
    return {
        "fg": 90 + 130 * hue,                       # the object's / texture's main colour
        "bg": 35 + 60 * rng.random(3),              # the backdrop behind objects
        "accent": 255 - 170 * hue,
        "stain": rng.choice([(120, 80, 40), (70, 70, 80), (140, 120, 60), (90, 60, 70)]),
        "teeth": int(rng.integers(8, 11)),
        "noise": rng.uniform(1.5, 2.5),             # sensor noise, grey levels
        "print": int(rng.integers(2 ** 62)),        # the marking every good chip / tablet carries
        "severity": SEVERITY.get(name, 1.0),
    }


def _light(rng, image):
    """Per-image lighting: global gain, a soft gradient, a small colour cast."""
    size = image.shape[0]
    y, x = P.coords(size)
    angle = rng.uniform(0, 2 * np.pi)
    gain = rng.normal(1.0, 0.035) * (1 + rng.uniform(0, 0.06) * (np.cos(angle) * x + np.sin(angle) * y))
    cast = rng.normal(1.0, 0.015, 3)
    return image * gain[..., None] * cast


def _frame(rng, size, turn_range, shift, scale=0.03):
    """Pose-jittered coordinates (u, v) in [-1, 1] units, and the turn."""
    y, x = P.coords(size)
    centre = rng.uniform(-shift, shift, 2)
    turn = rng.uniform(-turn_range, turn_range)
    s = rng.uniform(1 - scale, 1 + scale)
    u = (np.cos(turn) * (x - centre[0]) + np.sin(turn) * (y - centre[1])) / s
    v = (-np.sin(turn) * (x - centre[0]) + np.cos(turn) * (y - centre[1])) / s
    return u, v, turn


def _warp(rng, size, amount, cells=3):
    """A smooth displacement field in [-1, 1] units: (du, dv)."""
    return (amount * (P.value_noise(rng, size, cells) - 0.5), amount * (P.value_noise(rng, size, cells) - 0.5))


def _lookup(rng, n=256):
    return rng.random(n)


def _texture_weave(rng, size, style, edit):
    """Plain weave: over/under threads with fibre grain, per-thread tone, a gentle warp."""
    u, v, turn = _frame(rng, size, 0.06, 0.0, 0.0)
    du, dv = _warp(rng, size, 0.05)
    pitch = (2 / size) * rng.uniform(10.5, 11.5)
    a = (u + du) / pitch + rng.uniform(0, 1)
    b = (v + dv) / pitch + rng.uniform(0, 1)
    tone_a, tone_b = _lookup(rng), _lookup(rng)
    ia, ib = np.floor(a).astype(int), np.floor(b).astype(int)
    fa, fb = a - ia, b - ib
    warp_on_top = (ia + ib) % 2 == 0
    across = np.where(warp_on_top, fa, fb)
    along = np.where(warp_on_top, fb, fa)
    thread = np.where(warp_on_top, tone_a[ia % 256], tone_b[ib % 256])
    grain = P.fractal_noise(rng, size, 12, 2)
    gray = (0.3 + 0.55 * np.sin(np.pi * across) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * along))
            + 0.08 * (thread - 0.5) + 0.12 * (grain - 0.5))
    image = P.colorize(np.clip(gray, 0, 1), style["fg"] * 0.35, style["fg"])
    return image, {"angle": turn, "pitch_px": pitch * size / 2}


def _texture_marble(rng, size, style, edit):
    y, x = P.coords(size)
    turbulence = P.fractal_noise(rng, size, 3, 4)
    angle = rng.uniform(-0.4, 0.4) + 0.6
    veins = np.abs(np.sin(5 * (np.cos(angle) * x + np.sin(angle) * y) + 7 * turbulence + rng.uniform(0, 6)))
    gray = 0.55 + 0.4 * veins ** 0.35 + 0.08 * (P.fractal_noise(rng, size, 16, 2) - 0.5)
    return P.colorize(np.clip(gray, 0, 1), (95, 100, 98), (236, 232, 222)), {}


def _texture_mesh(rng, size, style, edit):
    """A wire grid over a dark backdrop; edits break a wire or bend the grid."""
    edit = edit or {}
    u, v, turn = _frame(rng, size, 0.05, 0.0, 0.0)
    du, dv = _warp(rng, size, 0.03)
    u, v = u + du, v + dv
    if "bend" in edit:
        (cu, cv), radius, shift = edit["bend"]
        bump = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / radius ** 2)
        u, v = u + shift[0] * bump, v + shift[1] * bump
    px = 2 / size
    pitch = px * rng.uniform(10.5, 11.5)
    offset = rng.uniform(0, pitch, 2)
    width = px * 1.2
    da = np.abs((u + offset[0]) % pitch - pitch / 2)  # distance to the nearest vertical wire
    db = np.abs((v + offset[1]) % pitch - pitch / 2)
    wire_a = np.clip(1 - (da / width) ** 2, 0, 1)
    wire_b = np.clip(1 - (db / width) ** 2, 0, 1)
    if "break" in edit:
        (cu, cv), radius, axis = edit["break"]
        gap = np.clip((np.hypot(u - cu, v - cv) - radius) / px + 0.5, 0, 1)
        if axis == 0:
            wire_a = wire_a * gap
        else:
            wire_b = wire_b * gap
    wire = np.maximum(wire_a, wire_b)
    back = 0.12 + 0.08 * P.fractal_noise(rng, size, 4, 3)
    gray = back + (0.55 + 0.3 * np.sqrt(wire)) * wire + 0.05 * (P.fractal_noise(rng, size, 16, 2) - 0.5) * wire
    image = P.colorize(np.clip(gray, 0, 1), style["bg"] * 0.4, style["fg"] * 1.1)
    return image, {"pitch": pitch, "offset": offset, "turn": turn, "du": du, "dv": dv}


def _texture_suede(rng, size, style, edit):
    """Leather-like: blotchy tone, a directional nap, pores."""
    y, x = P.coords(size)
    tone = P.fractal_noise(rng, size, 3, 3)
    nap = ndimage.gaussian_filter(rng.random((size, size)), (0.6, 2.5))
    nap = ndimage.rotate(nap, rng.uniform(0, 180), reshape=False, mode="wrap", order=1)
    nap = (nap - nap.mean()) / (nap.std() + 1e-8)
    pores = ndimage.gaussian_filter((rng.random((size, size)) < 0.02).astype(float), 0.7)
    gray = 0.5 + 0.18 * (tone - 0.5) + 0.05 * nap - 0.9 * pores
    return P.colorize(np.clip(gray, 0, 1), (60, 40, 28), (200, 150, 110)), {}


def _texture_terrazzo(rng, size, style, edit):
    """Stone chips (jittered Worley cells) in a cement matrix."""
    y, x = P.coords(size)
    matrix = 0.5 + 0.25 * P.fractal_noise(rng, size, 4, 3) + 0.05 * (P.fractal_noise(rng, size, 32, 1) - 0.5)
    image = P.colorize(matrix, (150, 150, 145), (212, 210, 202))
    n = int(rng.integers(34, 42))
    points = rng.uniform(-1.1, 1.1, (n, 2))
    radii = rng.uniform(0.04, 0.09, n)
    palette = np.array([style["accent"], style["fg"], (70, 70, 72), (180, 170, 150)], float)
    colours = palette[rng.integers(0, 4, n)] * rng.uniform(0.85, 1.1, (n, 1))
    rough = 0.35 * (P.fractal_noise(rng, size, 8, 2) - 0.5)
    distance = np.hypot(x[None] - points[:, 0, None, None], y[None] - points[:, 1, None, None]) / radii[:, None, None]
    nearest = distance.argmin(axis=0)
    coverage = np.clip((1 - distance.min(axis=0) - rough) * size * 0.04, 0, 1)
    chips = colours[nearest] * (0.93 + 0.07 * P.value_noise(rng, size, 16))[..., None]
    return image * (1 - coverage[..., None]) + chips * coverage[..., None], {}


_TEXTURES = {"weave": _texture_weave, "marble": _texture_marble, "mesh": _texture_mesh,
             "suede": _texture_suede, "terrazzo": _texture_terrazzo}


# ---------------------------------------------------------------- objects

def _cover(sd, px):
    """Antialiased coverage of a signed distance (< 0 inside), in [0, 1]."""
    return np.clip(0.5 - sd / px, 0, 1)


def _hexagon_radius(theta, radius):
    return radius * np.cos(np.pi / 6) / np.cos((theta % (np.pi / 3)) - np.pi / 6)


def _render_object(draw, rng, size, style, edit):
    """Backdrop + a shaded object with a soft shadow: (image, coverage [S, S], meta)."""
    px = 2 / size
    full = draw.__name__ in _ROUND
    u, v, turn = _frame(rng, size, np.pi if full else 0.08, 0.05)
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    surface = P.fractal_noise(rng, size, 12, 2)
    coverage, height, albedo, shine, meta = draw(u, v, r, theta, rng, style, edit or {}, px, surface)
    if edit and "bite" in edit:
        (cu, cv), radius = edit["bite"]
        coverage = coverage * np.clip((np.hypot(u - cu, v - cv) - radius) / px + 0.5, 0, 1)
    height = height * coverage + 2.0 * ndimage.gaussian_filter(coverage, 1.2)
    light = rng.uniform(0, 2 * np.pi) if full else rng.normal(-2.3, 0.25)
    elevation = rng.uniform(0.8, 1.0)
    lx, ly, lz = np.cos(light) * np.cos(elevation), np.sin(light) * np.cos(elevation), np.sin(elevation)
    gy, gx = np.gradient(height)
    norm = np.sqrt(gx ** 2 + gy ** 2 + 1)
    diffuse = np.clip((-gx * lx - gy * ly + lz) / norm, 0, 1)
    half = np.array([lx, ly, lz + 1]) / np.linalg.norm([lx, ly, lz + 1])
    specular = np.clip((-gx * half[0] - gy * half[1] + half[2]) / norm, 0, 1) ** 24
    shaded = albedo * (0.35 + 0.65 * diffuse)[..., None] + (255 * shine * specular)[..., None]
    backdrop = P.colorize(0.45 + 0.3 * P.fractal_noise(rng, size, 4, 3), style["bg"] * 0.85, style["bg"] * 1.15)
    shadow = ndimage.shift(ndimage.gaussian_filter(coverage, 3.0), (-3 * ly, -3 * lx), order=1)
    backdrop = backdrop * (1 - 0.35 * shadow)[..., None]
    if "glass" in meta:  # transparent parts show the backdrop through them
        backdrop_seen = backdrop * meta["glass"][..., None]
        shaded = shaded + backdrop_seen
    image = backdrop * (1 - coverage[..., None]) + shaded * coverage[..., None]
    meta.update(u=u, v=v, turn=turn, px=px)
    return image, coverage, meta


def _grey(level, tint, surface, grain=0.08):
    """Albedo [S, S, 3]: a colour times a grain field."""
    return np.asarray(tint, float) * (level * (1 + grain * (surface - 0.5)))[..., None]


def _obj_washer(u, v, r, theta, rng, style, edit, px, surface):
    sd = np.maximum(r - 0.6, 0.27 - r)
    brushed = np.interp(r, np.linspace(0, 1, 400), rng.random(400))
    height = 1.5 * np.clip((0.6 - r) / 0.05, 0, 1) * np.clip((r - 0.27) / 0.05, 0, 1)
    albedo = _grey(0.75 + 0.08 * brushed, (200, 200, 205), surface)
    return _cover(sd, px), height, albedo, 0.35, {}


def _obj_bolt(u, v, r, theta, rng, style, edit, px, surface):
    """Side view: a hex head on the left, a threaded shank to the right."""
    head = np.maximum(np.abs(u + 0.5) - 0.12, np.abs(v) - 0.34)
    shank = np.maximum(np.abs(u - 0.15) - 0.55, np.abs(v) - 0.17)
    sd = np.minimum(head, shank)
    phase = rng.uniform(0, 1)
    pitch = 0.1
    thread = np.sin(2 * np.pi * ((u - 0.12 * v) / pitch + phase))
    on_thread = (u > -0.3) & (u < 0.68)
    if "thread" in edit:  # a flattened, scuffed stretch of thread
        start, length = edit["thread"]
        damage = np.clip(1 - np.abs(u - start) / length, 0, 1) ** 0.5 * (v > -0.05)
        thread = thread * (1 - damage) - 0.3 * damage
    roll = np.cos(np.clip(v / 0.17, -1, 1) * np.pi / 2)
    height = np.where(u < -0.37, 3.0 * np.cos(np.clip(v / 0.34, -1, 1) * np.pi / 2) ** 0.3,
                      2.0 * roll + 0.9 * thread * on_thread)
    albedo = _grey(0.7 + 0.06 * thread * on_thread, style["fg"] * 0.4 + 110, surface)
    return _cover(sd, px), height, albedo, 0.45, {}


def _obj_button(u, v, r, theta, rng, style, edit, px, surface):
    holes = np.min([np.hypot(u - a, v - b) for a in (-0.13, 0.13) for b in (-0.13, 0.13)], axis=0) - 0.055
    sd = np.maximum(r - 0.58, -holes)
    height = 1.2 + 1.6 * np.clip((r - 0.46) / 0.05, 0, 1) * np.clip((0.58 - r) / 0.04, 0, 1)
    albedo = _grey(0.9, style["fg"], surface, 0.1)
    return _cover(sd, px), height, albedo, 0.15, {}


def _obj_gear(u, v, r, theta, rng, style, edit, px, surface):
    teeth = style["teeth"]
    phase = (theta * teeth / (2 * np.pi)) % 1
    tooth = np.clip(1.6 - 6 * np.abs(phase - 0.5), 0, 1)  # trapezoid teeth
    if "tooth" in edit:
        k = np.floor(theta * teeth / (2 * np.pi)) % teeth
        tooth = np.where(k == edit["tooth"] % teeth, 0, tooth)
    outer = 0.5 + 0.1 * tooth
    sd = np.maximum(r - outer, 0.14 - r)
    height = 1.0 + 1.5 * np.clip((0.3 - r) / 0.04, 0, 1)
    albedo = _grey(0.8, (190, 185, 175), surface)
    return _cover(sd, px), height, albedo, 0.4, {"missing": "tooth", "teeth": teeth}


def _obj_vial(u, v, r, theta, rng, style, edit, px, surface):
    """A glass vial (side view) with a cap and a liquid up to a varying level."""
    body = np.maximum(np.abs(u) - 0.2, np.abs(v - 0.05) - 0.6)
    body = np.maximum(body, np.hypot(np.maximum(np.abs(u) - 0.12, 0), np.maximum(v - 0.57, 0)) - 0.08)
    cap = np.maximum(np.abs(u) - 0.23, np.abs(v + 0.62) - 0.1)
    sd = np.minimum(body, cap)
    level = rng.uniform(-0.12, -0.06)
    liquid = (v > level + 0.01 * np.cos(u * 12)) & (cap > 0)
    edge = np.clip(1 - np.abs(np.abs(u) - 0.17) / 0.03, 0, 1) * (cap > 0)
    albedo = np.where(liquid[..., None], style["fg"] * 0.55, 25.0)
    albedo = np.where((cap <= 0)[..., None], np.asarray(style["accent"], float) * 0.8, albedo)
    glass = np.where(cap > 0, np.where(liquid, 0.35, 0.75), 0.0)
    height = 1.5 * np.cos(np.clip(u / 0.2, -1, 1) * np.pi / 2)
    albedo = albedo + 70 * edge[..., None]
    return _cover(sd, px), height, albedo * (1 + 0.05 * (surface[..., None] - 0.5)), 0.5, {"glass": glass}


_CHIP_GLYPHS = 7


def _print_strokes(rng, n, origin, step, height):
    """Pseudo-text: `n` glyphs of 2-3 strokes each, as polylines in (u, v)."""
    strokes = []
    for g in range(n):
        x0 = origin[0] + g * step
        corners = np.array([[x0, origin[1]], [x0 + step * 0.7, origin[1]],
                            [x0, origin[1] + height], [x0 + step * 0.7, origin[1] + height],
                            [x0, origin[1] + height / 2], [x0 + step * 0.7, origin[1] + height / 2]])
        for _ in range(int(rng.integers(2, 4))):
            i, j = rng.choice(6, 2, replace=False)
            strokes.append((g, corners[[i, j]]))
    return strokes


def _stroke_alpha_uv(u, v, strokes, width, px):
    distance = np.full(u.shape, np.inf)
    for _, points in strokes:
        distance = np.minimum(distance, _polyline_distance(u, v, points))
    return np.clip((width / 2 - distance) / px + 0.5, 0, 1)


def _obj_chip(u, v, r, theta, rng, style, edit, px, surface):
    """An IC package: epoxy body, 2×7 pins, a printed marking and a pin-1 dot."""
    body = np.maximum(np.abs(u) - 0.4, np.abs(v) - 0.32)
    pin_x = -0.33 + 0.11 * np.arange(7)
    pins = []
    for side in (-1, 1):
        for k, px0 in enumerate(pin_x):
            if edit.get("pin") == (side, k):
                continue
            pins.append(np.maximum(np.abs(u - px0) - 0.03, np.abs(v - side * 0.4) - 0.09))
    pin_sd = np.min(pins, axis=0)
    sd = np.minimum(body, pin_sd)
    strokes = _print_strokes(np.random.default_rng(style["print"]), 5, (-0.25, -0.06), 0.11, 0.1)
    if "drop" in edit:
        strokes = [s for i, s in enumerate(strokes) if i not in edit["drop"]]
    if "shift" in edit:
        g, d = edit["shift"]
        strokes = [(h, p + (d if h == g else 0)) for h, p in strokes]
    ink = _stroke_alpha_uv(u, v, strokes, 0.018, px)
    dot = _cover(np.hypot(u + 0.3, v + 0.2) - 0.03, px)
    is_body = body < 0
    albedo = np.where(is_body[..., None], 45.0, 205.0) * (1 + 0.1 * (surface[..., None] - 0.5))
    albedo = albedo + (120 * ink + 40 * dot)[..., None] * is_body[..., None]
    height = np.where(is_body, 2.0, 0.8) - 0.5 * dot
    return _cover(sd, px), height, albedo, 0.2, {"missing": "pin"}


def _obj_ring(u, v, r, theta, rng, style, edit, px, surface):
    sd = np.abs(r - 0.52) - 0.1
    height = 4.0 * np.sqrt(np.clip(1 - ((r - 0.52) / 0.1) ** 2, 0, 1))
    albedo = _grey(0.95, style["bg"] * 0.5 + 30, surface, 0.15)
    return _cover(sd, px), height, albedo, 0.25, {}


def _obj_tablet(u, v, r, theta, rng, style, edit, px, surface):
    """A pill with a score line, speckles and an embossed imprint."""
    e = np.hypot(u / 0.62, v / 0.42)
    sd = (e - 1) * 0.42
    strokes = _print_strokes(np.random.default_rng(style["print"]), 3, (0.08, -0.08), 0.12, 0.16)
    if "drop" in edit:
        strokes = [s for i, s in enumerate(strokes) if i not in edit["drop"]]
    if "shift" in edit:
        g, d = edit["shift"]
        strokes = [(h, p + (d if h == g else 0)) for h, p in strokes]
    imprint = _stroke_alpha_uv(u, v, strokes, 0.02, px)
    score = np.clip(1 - np.abs(u + 0.2) / 0.012, 0, 1)
    speckle = (P.value_noise(rng, u.shape[0], 40) > 0.86).astype(float)
    height = 2.5 * np.sqrt(np.clip(1 - e ** 2, 0, 1)) - 0.8 * imprint - 0.6 * score
    albedo = _grey(1.0, (232, 228, 218), surface, 0.05) * (1 - 0.3 * speckle[..., None] * np.array([0, 0.6, 0.7]))
    albedo = albedo * (1 - 0.12 * imprint[..., None])
    return _cover(sd, px), height, albedo, 0.1, {}


def _obj_hexnut(u, v, r, theta, rng, style, edit, px, surface):
    sd = np.maximum(r - _hexagon_radius(theta, 0.6), 0.24 - r)
    chamfer = np.clip((_hexagon_radius(theta, 0.6) * 0.93 - r) / 0.06, 0, 1)
    bore = np.clip((0.31 - r) / 0.07, 0, 1)
    threads = 0.5 + 0.5 * np.sin(r * 2 * np.pi / 0.025)
    height = 1.0 + 1.5 * chamfer * (1 - bore)
    albedo = _grey(0.7, (185, 185, 190), surface) * (1 - 0.35 * bore * threads)[..., None]
    return _cover(sd, px), height, albedo, 0.45, {}


def _obj_lens(u, v, r, theta, rng, style, edit, px, surface):
    """A lens in a metal rim: mostly transparent, a faint coating tint and reflections."""
    sd = r - 0.62
    rim = np.clip((r - 0.54) / 0.02, 0, 1)
    height = 3.0 * np.sqrt(np.clip(1 - (r / 0.62) ** 2, 0, 1))
    albedo = np.where(rim[..., None] > 0.5, np.array([150.0, 150, 155]), np.asarray(style["fg"]) * 0.15)
    glass = (1 - rim) * 0.8
    return _cover(sd, px), height, albedo * (1 + 0.05 * (surface[..., None] - 0.5)), 0.6, {"glass": glass}


_OBJECTS = {"washer": _obj_washer, "bolt": _obj_bolt, "button": _obj_button, "gear": _obj_gear,
            "vial": _obj_vial, "chip": _obj_chip, "ring": _obj_ring, "tablet": _obj_tablet,
            "hexnut": _obj_hexnut, "lens": _obj_lens}
# objects placed at any turn under light from any side; the rest (gear and hexnut included, whose
# corners a small reconstruction network at 64 px cannot follow round) lie nearly upright
_ROUND = {"_obj_washer", "_obj_button", "_obj_ring", "_obj_lens"}


# ---------------------------------------------------------------- defects

def _add_defect(defect, rng, clean, foreground, meta, render, style, tries: int = 30):
    """Apply one defect; returns (image float [S, S, 3], mask bool [S, S]).

    The defect function draws a defective version of the scene; the mask is the set of
    pixels it moved by more than MASK_THRESHOLD (small gaps closed), and outside the mask
    the clean pixels are kept, so image == clean exactly there.
    """
    size = clean.shape[0]
    ctx = {"clean": clean, "fg": foreground, "meta": meta, "render": render, "style": style, "size": size}
    for _ in range(tries):
        defective = _DEFECTS[defect](rng, ctx)
        if style["severity"] != 1.0:
            defective = clean + style["severity"] * (defective - clean)
        changed = np.abs(defective - clean).max(axis=2) > MASK_THRESHOLD
        mask = changed | ndimage.binary_closing(changed, np.ones((3, 3)))
        if 12 <= mask.sum() < 0.12 * mask.size:
            return np.where(mask[..., None], defective, clean), mask
    raise AssertionError(f"could not place a {defect} defect")  # internal: generator bug


def _anchor(rng, foreground, margin=4):
    """A pixel (row, col) well inside the foreground."""
    inside = ndimage.binary_erosion(foreground > 0.5, iterations=margin, border_value=0)
    if not inside.any():
        inside = foreground > 0.5
    ys, xs = np.nonzero(inside)
    k = rng.integers(len(ys))
    return np.array([ys[k], xs[k]], float)


def _edge_anchor(rng, foreground):
    """A pixel on the foreground's outline."""
    solid = foreground > 0.5
    ys, xs = np.nonzero(solid & ~ndimage.binary_erosion(solid))
    k = rng.integers(len(ys))
    return np.array([ys[k], xs[k]], float)


def _polyline_distance(x, y, points):
    """Distance from each (x, y) to the polyline through `points` [(x, y), ...]."""
    distance = np.full(np.shape(x), np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        distance = np.minimum(distance, np.hypot(x - x0 - t * dx, y - y0 - t * dy))
    return distance


def _line_alpha(size, points, width):
    """Antialiased coverage of a polyline `width` pixels wide; points are (row, col)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    distance = _polyline_distance(cols, rows, np.asarray(points)[:, ::-1])
    return np.clip(width / 2 + 0.5 - distance, 0, 1)


def _curve(rng, start, length, bend=0.25, n=12):
    """A gently bent curve of `length` px from `start` (row, col)."""
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(0, 1, n)[:, None]
    return start + t * length * direction + (bend * length * rng.normal() * t * (1 - t)) * normal


def _walk(rng, start, steps, step=3.0, wiggle=0.5):
    """A jagged random walk (row, col), the skeleton of a crack."""
    heading = rng.uniform(0, 2 * np.pi)
    points = [start]
    for _ in range(steps):
        heading += rng.normal(scale=wiggle)
        points.append(points[-1] + step * rng.uniform(0.7, 1.3) * np.array([np.sin(heading), np.cos(heading)]))
    return np.array(points)


def _amount(rng, low, high):
    """A defect's contrast: a fraction of the way from the clean pixel to the defect's colour."""
    return min(CONTRAST * rng.uniform(low, high), 0.9)


def _on(ctx, alpha):
    """Keep a surface defect on the object."""
    return alpha * ndimage.binary_erosion(ctx["fg"] > 0.5, iterations=1)


def _defect_scratch(rng, ctx):
    """A thin bright or dark line, 15-40 px long, mostly about one pixel wide."""
    points = _curve(rng, _anchor(rng, ctx["fg"]), rng.uniform(15, 40))
    alpha = _on(ctx, _line_alpha(ctx["size"], points, WIDTH * rng.uniform(0.8, 1.5)))
    amount = (_amount(rng, 0.25, 0.45) * alpha)[..., None]
    target = 255.0 if rng.random() < 0.5 else 0.0  # a bright (polished) or dark (dirty) groove
    return ctx["clean"] * (1 - amount) + target * amount


def _defect_crack(rng, ctx):
    """A dark jagged line with a branch, thinner than a pixel at its tips."""
    trunk = _walk(rng, _anchor(rng, ctx["fg"]), int(rng.integers(5, 10)))
    alpha = _line_alpha(ctx["size"], trunk, WIDTH * rng.uniform(0.9, 1.5))
    branch = _walk(rng, trunk[len(trunk) // 2], int(rng.integers(2, 5)))
    alpha = np.maximum(alpha, 0.7 * _line_alpha(ctx["size"], branch, WIDTH * 0.8))
    return ctx["clean"] * (1 - _amount(rng, 0.3, 0.5) * _on(ctx, alpha))[..., None]


def _blob(rng, size, centre, radius):
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    wobble = P.value_noise(rng, size, 10) - 0.5
    distance = np.hypot(rows - centre[0], cols - centre[1]) / radius + 0.8 * wobble
    return ndimage.gaussian_filter(np.clip((1 - distance) * 3, 0, 1), 0.8)


def _defect_stain(rng, ctx):
    """A soft, irregular tint a few pixels across; faint at its edge."""
    alpha = _on(ctx, _blob(rng, ctx["size"], _anchor(rng, ctx["fg"]), WIDTH * rng.uniform(3, 6)))
    strength = _amount(rng, 0.25, 0.45) * alpha[..., None]
    return ctx["clean"] * (1 - strength) + 0.7 * np.asarray(ctx["style"]["stain"], float) * strength


def _defect_contamination(rng, ctx):
    """A few specks and a fibre of foreign material."""
    size = ctx["size"]
    centre = _anchor(rng, ctx["fg"])
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    alpha = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 4))):
        spot = centre + rng.normal(scale=4, size=2)
        alpha = np.maximum(alpha, np.clip(WIDTH * rng.uniform(0.8, 1.6) + 0.5 - np.hypot(rows - spot[0], cols - spot[1]), 0, 1))
    if rng.random() < 0.6:
        alpha = np.maximum(alpha, _line_alpha(size, _curve(rng, centre, rng.uniform(8, 18), 0.6), WIDTH))
    colour = rng.choice([(40, 35, 30), (200, 190, 150), (90, 110, 60)])
    strength = _amount(rng, 0.4, 0.6) * _on(ctx, alpha)[..., None]
    return ctx["clean"] * (1 - strength) + np.asarray(colour, float) * strength


def _defect_hole(rng, ctx):
    """A small pit: a dark ellipse with a lighter lip on the lit side."""
    size = ctx["size"]
    centre = _anchor(rng, ctx["fg"])
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    radii = WIDTH * rng.uniform(1.5, 2.8, 2)
    angle = rng.uniform(0, np.pi)
    dr, dc = rows - centre[0], cols - centre[1]
    a = (np.cos(angle) * dc + np.sin(angle) * dr) / radii[0]
    b = (-np.sin(angle) * dc + np.cos(angle) * dr) / radii[1]
    e = np.hypot(a, b)
    pit = np.clip((1 - e) * 2.5, 0, 1)
    lip = np.clip(1 - np.abs(e - 1.2) * 3, 0, 1) * (a > 0)
    shade = 1 - _amount(rng, 0.4, 0.6) * pit + 0.2 * lip
    return ctx["clean"] * _on(ctx, shade - 1)[..., None] + ctx["clean"]


def _defect_cut(rng, ctx):
    """A straight slit: a dark core with a light lip along one side."""
    size = ctx["size"]
    points = _curve(rng, _anchor(rng, ctx["fg"]), rng.uniform(14, 30), 0.08)
    core = _line_alpha(size, points, WIDTH * rng.uniform(0.9, 1.4))
    lip = _line_alpha(size, points + WIDTH * np.array([1.2, 0.8]), WIDTH) * (1 - core)
    return ctx["clean"] * (1 - _amount(rng, 0.35, 0.5) * core + 0.15 * lip)[..., None]


def _defect_fold(rng, ctx):
    """A crease: a long soft ridge, lit on one side and shaded on the other."""
    size = ctx["size"]
    points = _curve(rng, _anchor(rng, ctx["fg"]), rng.uniform(30, 60), 0.3, n=16)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    distance = _polyline_distance(cols, rows, points[:, ::-1])
    sigma = WIDTH * rng.uniform(1.2, 2.0)
    offset = _polyline_distance(cols + 1.0, rows + 1.0, points[:, ::-1]) - distance  # which side
    ridge = np.exp(-distance ** 2 / (2 * sigma ** 2)) * offset
    return ctx["clean"] * (1 + _amount(rng, 0.12, 0.2) * ridge)[..., None]


def _defect_thread(rng, ctx):
    """weave: a pulled thread, a slightly displaced bright strand along the weave; bolt: damaged thread."""
    if "angle" not in ctx["meta"]:  # the bolt: a flattened stretch of the shank's thread
        image, _, _ = ctx["render"]({"thread": (rng.uniform(-0.2, 0.55), WIDTH * rng.uniform(0.04, 0.07))})
        return image
    size = ctx["size"]
    angle = ctx["meta"]["angle"] + rng.choice([0, np.pi / 2]) + rng.normal(scale=0.03)
    start = _anchor(rng, ctx["fg"])
    length = rng.uniform(25, 50)
    direction = np.array([np.sin(angle), np.cos(angle)])
    t = np.linspace(0, 1, 10)[:, None]
    points = start + t * length * direction + rng.normal(scale=0.4, size=(10, 2))
    alpha = _line_alpha(size, points, WIDTH * rng.uniform(1.5, 2.0))
    light = np.minimum(1.2 * ctx["clean"].reshape(-1, 3).max(axis=0), 255)
    strength = _amount(rng, 0.4, 0.6) * alpha[..., None]
    return ctx["clean"] * (1 - strength) + light * strength


def _defect_broken(rng, ctx):
    """mesh: a wire snapped near a grid crossing."""
    meta = ctx["meta"]
    axis = int(rng.integers(2))
    k = rng.integers(-3, 4, 2)
    pitch = meta["pitch"]
    centre = np.array([k[0] * pitch + pitch / 2 - meta["offset"][0], k[1] * pitch + pitch / 2 - meta["offset"][1]])
    centre[1 - axis] += rng.uniform(0.25, 0.75) * pitch * rng.choice([-1, 1])
    image, _, _ = ctx["render"]({"break": (centre, pitch * WIDTH * rng.uniform(0.12, 0.2), axis)})
    return image


def _defect_bent(rng, ctx):
    """mesh: a dent that pushes the wires sideways by 1-2 px."""
    px = 2 / ctx["size"]
    centre = rng.uniform(-0.7, 0.7, 2)
    shift = rng.normal(size=2)
    shift *= px * WIDTH * rng.uniform(1.0, 1.5) / np.linalg.norm(shift)
    image, _, _ = ctx["render"]({"bend": (centre, px * WIDTH * rng.uniform(3, 5), shift)})
    return image


def _defect_missing(rng, ctx):
    """A part is absent: a gear tooth, a chip's pin, or a bite out of the object's rim."""
    meta = ctx["meta"]
    if meta.get("missing") == "tooth":
        edit = {"tooth": int(rng.integers(meta["teeth"]))}
    elif meta.get("missing") == "pin":
        edit = {"pin": (int(rng.choice([-1, 1])), int(rng.integers(7)))}
    else:
        row, col = _edge_anchor(rng, ctx["fg"]).astype(int)
        centre = (meta["u"][row, col], meta["v"][row, col])  # in the object's own frame
        edit = {"bite": (centre, meta["px"] * WIDTH * rng.uniform(2.0, 3.5))}
    image, _, _ = ctx["render"](edit)
    return image


def _defect_misprint(rng, ctx):
    """Part of the printed marking is missing or shifted."""
    if rng.random() < 0.5:
        edit = {"drop": set(rng.choice(6, int(rng.integers(1, 3)), replace=False).tolist())}
    else:
        edit = {"shift": (int(rng.integers(3)), rng.normal(scale=0.045, size=2))}
    image, _, _ = ctx["render"](edit)
    return image


_DEFECTS = {"scratch": _defect_scratch, "crack": _defect_crack, "hole": _defect_hole,
            "stain": _defect_stain, "cut": _defect_cut, "contamination": _defect_contamination,
            "missing": _defect_missing, "thread": _defect_thread, "fold": _defect_fold,
            "broken": _defect_broken, "bent": _defect_bent, "misprint": _defect_misprint}


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")

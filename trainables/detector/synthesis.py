"""Anomaly synthesis of the detector (paper §3.1; DRAEM's recipe, docs/detector.md §3), in numpy.

Three stages per anomalous sample: (1) a mask M = Perlin noise (per-axis lattice 2^U{0..5},
rotated, thresholded) ∩ the image's foreground; (2) an appearance A drawn from a source pool
and altered by 3 of DRAEM's 10 augmenters; (3) random linear blending,
I_a = I·(1−M) + M·(α·A + (1−α)·I) with opacity α ~ U(opacity_range). Half the samples
(1 − p_anom) stay clean. The normal image I is itself rotated with probability `rot_p`.

Source pools (`anomaly_source`): `mvtec` = the other categories' *training* images (read
file by file from train/good, so no test image of any category is ever opened); `dtd` = the
texture bank (DTD or procedural); `mvtec_defects` = the other categories' defective test
images, the paper-literal reading, opt-in and tagged leaky; `dfmgan` = a bank of DFMGAN
triplets of the same category (defect-free twin, defect image, mask) from finished stage-2
models: with probability p_anom a sample *is* a triplet (I = twin, I_a = defect image, M = mask)
instead of a Perlin blend (docs/detector.md §3.6; the stage-2 models learnt from a seeded third
of the defect images, which the detector then does not test on). The evaluated category's test
images are never a source otherwise. Every draw comes from a `numpy.random.Generator` the caller seeds
from (seed, rank, step), so a batch is a pure function of those three numbers.

Not here: the networks, losses and the training loop (see model.py, losses.py, train.py).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from trainables.errors import UserInputError

SOURCES = ("mvtec", "dtd", "mvtec_defects", "dfmgan")


# ---------------------------------------------------------------- stage 1: masks

def fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(rng: np.random.Generator, size: int, res: tuple[int, int]) -> np.ndarray:
    """2-D gradient (Perlin) noise on a res_y×res_x lattice, values about [-1, 1]. [S, S]"""
    angles = rng.uniform(0, 2 * math.pi, (res[0] + 1, res[1] + 1))
    cos, sin = np.cos(angles), np.sin(angles)  # the lattice's unit gradients
    ty = np.arange(size) / size * res[0]
    tx = np.arange(size) / size * res[1]
    iy, ix = np.floor(ty).astype(int), np.floor(tx).astype(int)
    fy, fx = (ty - iy)[:, None], (tx - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # rows, then columns: two 1-D gathers, a third of the time of one 2-D fancy index
        return cos[iy + dy][:, ix + dx] * (fy - dy) + sin[iy + dy][:, ix + dx] * (fx - dx)

    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    u, v = fade(fx), fade(fy)
    top = n00 + u * (n01 - n00)
    bottom = n10 + u * (n11 - n10)
    return math.sqrt(2) * (top + v * (bottom - top))


def perlin_mask(rng: np.random.Generator, size: int, scale_max: int = 5,
                threshold: float = 0.5) -> np.ndarray:
    """DRAEM's mask: per-axis scale 2^U{0..scale_max}, rotation U(−90°, 90°), noise > threshold. [S, S] bool"""
    res = tuple(int(2 ** rng.integers(0, scale_max + 1)) for _ in range(2))
    res = tuple(min(r, size // 2) for r in res)  # at least 2 px per lattice cell
    noise = perlin_noise(rng, size, res)
    noise = ndimage.rotate(noise, rng.uniform(-90, 90), reshape=False, order=1, mode="constant", cval=0.0)
    return noise > threshold


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of a [0, 1] image (256 bins)."""
    hist, edges = np.histogram(gray, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Object foreground (docs/detector.md §3.2): blur, Otsu, invert if the border is mostly 1, close, fill, dilate.

    Sizes are the 256-px values of docs/detector.md §3.2 scaled to the image. Falls back to the whole image when
    the result covers under 1 % or over 99 % of it (no separable object). [S, S] bool
    """
    size = image.shape[0]
    scale = size / 256
    gray = image.astype(np.float64).mean(axis=2) / 255.0
    gray = ndimage.gaussian_filter(gray, sigma=max(0.5, 2 * scale))
    fg = gray > otsu_threshold(gray)
    border = max(1, round(10 * scale))
    ring = np.ones_like(fg)
    ring[border:-border, border:-border] = False
    if fg[ring].mean() > 0.5:
        fg = ~fg
    close = max(3, round(9 * scale) | 1)
    fg = ndimage.binary_closing(fg, structure=np.ones((close, close)), border_value=0)
    fg = ndimage.binary_fill_holes(fg)
    dilate = max(3, round(5 * scale) | 1)
    fg = ndimage.binary_dilation(fg, structure=np.ones((dilate, dilate)))
    if not 0.01 < fg.mean() < 0.99:
        return np.ones_like(fg)
    return fg


# ---------------------------------------------------------------- stage 2: appearance

def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x)


def aug_gamma(rng, x):
    """Gamma contrast 0.5–2.0, per channel."""
    gamma = rng.uniform(0.5, 2.0, 3)
    return np.clip(255.0 * (x / 255.0) ** gamma, 0, 255).astype(np.uint8)


def aug_brightness(rng, x):
    """Multiply by 0.8–1.2 and add −30…30."""
    return np.clip(x * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30), 0, 255).astype(np.uint8)


def aug_sharpen(rng, x):
    return np.asarray(ImageEnhance.Sharpness(_pil(x)).enhance(rng.uniform(1.5, 3.0)))


def aug_hue_saturation(rng, x):
    """Add −50…50 to hue and to saturation (HSV on a 0–255 scale)."""
    hsv = np.asarray(_pil(x).convert("HSV")).astype(np.int16)
    shift = rng.integers(-50, 51, 2)
    hsv[..., 0] = (hsv[..., 0] + shift[0]) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + shift[1], 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"))


def aug_solarize(rng, x):
    return np.asarray(ImageOps.solarize(_pil(x), threshold=int(rng.integers(32, 129))))


def aug_posterize(rng, x):
    return np.asarray(ImageOps.posterize(_pil(x), int(rng.integers(2, 7))))


def aug_invert(rng, x):
    return 255 - x


def aug_autocontrast(rng, x):
    return np.asarray(ImageOps.autocontrast(_pil(x)))


def aug_equalize(rng, x):
    return np.asarray(ImageOps.equalize(_pil(x)))


def aug_rotate(rng, x):
    """Affine rotation ±45° (reflected border, so no black corners enter the defect)."""
    return ndimage.rotate(x, rng.uniform(-45, 45), axes=(0, 1), reshape=False, order=1, mode="reflect")


AUGMENTERS = (aug_gamma, aug_brightness, aug_sharpen, aug_hue_saturation, aug_solarize, aug_posterize,
              aug_invert, aug_autocontrast, aug_equalize, aug_rotate)


def augment(rng: np.random.Generator, image: np.ndarray, count: int = 3) -> np.ndarray:
    """DRAEM: apply `count` augmenters drawn without replacement from the 10. uint8 [S, S, 3]"""
    for k in rng.choice(len(AUGMENTERS), size=count, replace=False):
        image = AUGMENTERS[k](rng, image)
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class SourcePool:
    """Appearance-source images for stage 2."""
    images: np.ndarray     # uint8 [K, S, S, 3]
    name: str              # the anomaly_source it was built for
    origin: str            # "embedded" | "mvtec" | "dtd" | "procedural": where the pixels came from
    leaky: bool            # True when built from test images (of other categories)


def build_source_pool(source: str, root, category: str, size: int, per_category: int = 0,
                      dtd_root: str | None = None, seed: int = 0) -> SourcePool:
    """The appearance pool for `category`; `root` is a trainables.data.DataRoot.

    `per_category` > 0 caps the images taken from each other category (chosen by `seed`).
    """
    from trainables.data import load_category, load_texture_bank, scan_category
    from trainables.data.mvtec import read_image

    if source not in SOURCES:
        raise UserInputError(f"anomaly_source={source!r}: expected one of {list(SOURCES)}")
    assert source != "dfmgan", "the dfmgan source is a TripletBank (load_triplet_bank), not a pool"
    if source == "dtd":
        # a DTD root given is an explicit ask: DTD or an error, never a silent procedural stand-in
        bank = load_texture_bank("dtd" if dtd_root else "procedural", dtd_root=dtd_root, size=size, seed=seed)
        return SourcePool(bank.images, source, bank.source, False)
    others = [c for c in root.categories if c != category]
    if not others:
        raise UserInputError(f"anomaly_source={source}: {root.path} holds no category besides {category!r}; "
                             "expected at least one other category, or use anomaly_source=dtd")
    rng = np.random.default_rng([seed, 104729])
    images = []
    for other in others:
        if source == "mvtec":
            paths = list(scan_category(root.path, other).train)  # train/good only: no test file is opened
            if per_category:
                paths = [paths[k] for k in sorted(rng.permutation(len(paths))[:per_category])]
            images += [_resize(read_image(p), size) for p in paths]
        else:
            data = load_category(root.path, other, size)
            defective = np.asarray(data.test)[data.test_labels == 1]
            if per_category:
                defective = defective[np.sort(rng.permutation(len(defective))[:per_category])]
            images += list(defective)
    if not images:
        raise UserInputError(f"anomaly_source={source}: no images found in the other categories of {root.path}")
    return SourcePool(np.stack(images), source, root.dataset, source == "mvtec_defects")


@dataclass(frozen=True)
class TripletBank:
    """DFMGAN triplets of one category at one λ, equal numbers per defect type, at the detector's size."""
    good: np.ndarray       # uint8 [K, S, S, 3]: the defect-free twin (same z, defect branch cut off)
    image: np.ndarray      # uint8 [K, S, S, 3]: the defect image
    mask: np.ndarray       # uint8 [K, S, S] in {0, 1}
    defect: tuple[str, ...]  # the defect type of each triplet
    lambda_ms: float       # the stage-2 models' mode-seeking weight


def load_triplet_bank(folders, category: str, size: int) -> TripletBank:
    """The bank of `dfmgan_banks` folders (each a finished stage-2 checkpoint with `triplets.npz`):
    every defect type's first n triplets, n = the smallest type's count, resized to `size`."""
    from trainables.gan.generate import TRIPLETS_FILE

    if not folders:
        raise UserInputError(f"dfmgan_banks: anomaly_source=dfmgan needs the finished DFMGAN stage-2 checkpoint "
                             f"folders of {category!r} (one per defect type, each with {TRIPLETS_FILE}); got none. "
                             f"Run it from `platform.sweep ablation --sources dfmgan` or set dfmgan_banks=DIR,DIR")
    banks = []
    for folder in folders:
        path = Path(folder) / TRIPLETS_FILE
        if not path.is_file():
            raise UserInputError(f"dfmgan_banks: {path} does not exist; expected the folder of a finished "
                                 f"DFMGAN stage-2 run (it writes {TRIPLETS_FILE} at its end)")
        with np.load(path, allow_pickle=False) as npz:
            banks.append({k: npz[k] for k in npz.files})
    labels = [(str(b["category"]), str(b["defect"]), float(b["lambda_ms"])) for b in banks]
    wrong = [f for f, (c, _, _) in zip(folders, labels) if c != category]
    if wrong:
        raise UserInputError(f"dfmgan_banks: {wrong[0]} holds triplets of another category; expected {category!r}")
    defects = [d for _, d, _ in labels]
    if len(set(defects)) != len(defects) or len({lam for _, _, lam in labels}) != 1:
        raise UserInputError(f"dfmgan_banks: expected one folder per defect type at one λ; got {labels}")
    n = min(len(b["image"]) for b in banks)
    if n == 0:
        raise UserInputError(f"dfmgan_banks: a stage-2 run generated no triplets ({labels})")
    return TripletBank(
        good=np.concatenate([_resize_all(b["good"][:n], size) for b in banks]),
        image=np.concatenate([_resize_all(b["image"][:n], size) for b in banks]),
        mask=np.concatenate([_resize_all(b["mask"][:n], size, Image.NEAREST) for b in banks]),
        defect=tuple(d for d in defects for _ in range(n)), lambda_ms=labels[0][2])


def _resize_all(images: np.ndarray, size: int, resample=Image.BILINEAR) -> np.ndarray:
    """uint8 [K, R, R(, 3)] -> [K, size, size(, 3)]; masks nearest-neighbour so they stay {0, 1}."""
    if images.shape[1] == size:
        return np.ascontiguousarray(images)
    return np.stack([np.asarray(Image.fromarray(x).resize((size, size), resample)) for x in images])


def bank_grid(bank: TripletBank, n: int = 16, per_row: int = 4) -> np.ndarray:
    """Rows of (twin | mask | defect image) triplets, taken round-robin over the defect types. uint8"""
    from trainables.pictures import grid

    types = sorted(set(bank.defect))
    queues = [[k for k, d in enumerate(bank.defect) if d == t] for t in types]
    picks = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)][:n]
    tiles = [tile for k in picks for tile in (bank.good[k], bank.mask[k] * 255, bank.image[k])]
    return grid(tiles, ncols=3 * min(per_row, len(picks)))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


# ---------------------------------------------------------------- the sampler

@dataclass(frozen=True)
class SynthesisParams:
    p_anom: float = 0.5                          # probability that a sample is anomalous
    opacity_range: tuple[float, float] = (0.1, 1.0)  # α of the blend, U(lo, hi)
    perlin_scale_max: int = 5                    # lattice 2^U{0..max} per axis
    perlin_threshold: float = 0.5
    n_augmenters: int = 3
    rot_p: float = 0.3                           # probability of rotating the normal image
    rot_deg: float = 45.0                        # ... by U(−deg, deg)
    fg_aware: bool = True                        # restrict M to the foreground (objects)
    mask_tries: int = 10                         # Perlin redraws before a sample falls back to clean


class AnomalySynthesizer:
    """Draws (I, I_a, M, y) batches from one category's training images and a source pool."""

    def __init__(self, train: np.ndarray, kind: str, pool: SourcePool | None, params: SynthesisParams,
                 bank: TripletBank | None = None):
        N, S, _, C = train.shape
        assert (pool is None) != (bank is None), "one appearance source: a pool or a DFMGAN triplet bank"
        assert bank is None or bank.image.shape[1] == S, (bank.image.shape, S)
        self.train = np.ascontiguousarray(train)
        self.size = S
        self.pool = pool
        self.bank = bank
        self.params = params
        whole = params.fg_aware is False or kind == "texture"
        # foregrounds are computed once per training image and cached (docs/detector.md §3.2)
        self.foregrounds = np.ones((N, S, S), bool) if whole else np.stack([foreground_mask(x) for x in train])

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
        """One sample: I, I_a float32 [S, S, 3] in [0, 1]; M float32 [S, S] in {0, 1}; y in {0, 1};
        the foreground FG bool [S, S] that M was restricted to."""
        return self._draw(rng)[0]

    def _draw(self, rng: np.random.Generator) -> tuple[tuple, bool]:
        """(a sample, whether it is a DFMGAN triplet of the bank)."""
        p = self.params
        if self.bank is not None and rng.random() < p.p_anom:
            # a generated triplet as it is: the twin is the normal image, the mask the defect's own
            j = int(rng.integers(len(self.bank.image)))
            M = self.bank.mask[j].astype(bool)
            I = self.bank.good[j].astype(np.float32) / 255.0
            I_a = self.bank.image[j].astype(np.float32) / 255.0
            return (I, I_a, M.astype(np.float32), int(M.any()), np.ones(M.shape, bool)), True
        k = int(rng.integers(len(self.train)))
        image, fg = self.train[k], self.foregrounds[k]
        if rng.random() < p.rot_p:
            angle = rng.uniform(-p.rot_deg, p.rot_deg)
            image = ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="nearest")
            fg = ndimage.rotate(fg, angle, reshape=False, order=0, mode="nearest")
        I = image.astype(np.float32) / 255.0
        M = np.zeros(fg.shape, bool)
        if self.bank is None and rng.random() < p.p_anom:
            for _ in range(p.mask_tries):
                M = perlin_mask(rng, self.size, p.perlin_scale_max, p.perlin_threshold) & fg
                if M.any():
                    break
        if not M.any():
            return (I, I.copy(), M.astype(np.float32), 0, fg), False
        A = augment(rng, self.pool.images[int(rng.integers(len(self.pool.images)))], p.n_augmenters)
        alpha = np.float32(rng.uniform(*p.opacity_range))
        blend = alpha * (A.astype(np.float32) / 255.0) + (1 - alpha) * I
        I_a = np.where(M[..., None], blend, I)  # exactly I outside M
        return (I, I_a.astype(np.float32), M.astype(np.float32), 1, fg), False

    def batch(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """n samples stacked channel-first: I, I_a [n, 3, S, S], M and FG [n, 1, S, S], y [n], and
        from_bank [n] (bool: the sample is a DFMGAN triplet)."""
        drawn = [self._draw(rng) for _ in range(n)]
        I, I_a, M, y, FG = (np.stack(parts) for parts in zip(*(sample for sample, _ in drawn)))
        return {"I": I.transpose(0, 3, 1, 2), "I_a": I_a.transpose(0, 3, 1, 2), "M": M[:, None],
                "y": y.astype(np.int64), "FG": FG[:, None], "from_bank": np.array([b for _, b in drawn])}

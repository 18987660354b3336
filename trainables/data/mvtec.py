"""Reader for datasets in the MVTec AD folder layout, with validation and a decode cache.

Layout: `<root>/<category>/{train/good, test/<type>, ground_truth/<type>/<name>_mask.png}`.
Any category folder in that layout works (MVTec AD's 15, the embedded dataset's, a user's
own product). Images of any mode (grayscale, RGBA, palette, 16-bit) become 8-bit RGB;
masks are resized nearest-neighbour, then binarised at half their maximum value. Malformed
data fails with one `DatasetError` naming the offending path and what was expected.
Decoded, resized arrays are cached per (category, size, content hash): in memory, and
optionally on disk as `.npy` files read back memory-mapped, so epochs and trials never
re-decode PNGs. This module reads; it never writes into the dataset.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables.data.embedded import EMBEDDED_CATEGORIES
from trainables.errors import DatasetError

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


@dataclass(frozen=True)
class TestItem:
    path: Path
    defect_type: str          # "good" or the defect folder's name
    mask_path: Path | None    # None for good images


@dataclass(frozen=True)
class CategoryIndex:
    """The validated file list of one category (nothing decoded yet)."""
    name: str
    path: Path
    train: tuple[Path, ...]
    test: tuple[TestItem, ...]


@dataclass(frozen=True)
class CategoryData:
    """One category decoded at one size: uint8 RGB arrays, masks in {0, 1}."""
    name: str
    kind: str                  # "texture" | "object" (decides foreground-aware synthesis)
    size: int
    train: np.ndarray          # [N, S, S, 3] defect-free training images
    test: np.ndarray           # [M, S, S, 3]
    test_masks: np.ndarray     # [M, S, S]; all zero for good images
    test_types: tuple[str, ...]  # "good" or a defect type, per test image

    @property
    def test_labels(self) -> np.ndarray:
        return np.array([t != GOOD for t in self.test_types], dtype=np.int64)

    @property
    def defect_types(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.test_types) - {GOOD}))

    @property
    def has_both_labels(self) -> bool:
        """Image-level metrics need good and defective test images."""
        return 0 < int(self.test_labels.sum()) < len(self.test_types)

    def defects(self, defect_type: str) -> tuple[np.ndarray, np.ndarray]:
        """Images [K, S, S, 3] and masks [K, S, S] of one defect type."""
        if defect_type not in self.defect_types:
            raise DatasetError(f"{self.name}/test/{defect_type}",
                               f"no such defect type; expected one of {list(self.defect_types)}")
        keep = np.array([t == defect_type for t in self.test_types])
        return self.test[keep], self.test_masks[keep]


def list_categories(root: str | os.PathLike) -> list[str]:
    """Category folders under `root` (every non-hidden directory), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "no such directory; expected a dataset root in the MVTec AD layout")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(root, "no category folders; expected <root>/<category>/train/good")
    return names


def scan_category(root: str | os.PathLike, category: str) -> CategoryIndex:
    """List and validate one category's files; raises DatasetError on the first problem."""
    path = Path(root) / category
    if not path.is_dir():
        raise DatasetError(path, f"no such category; found {list_categories(root)}")
    good = path / "train" / GOOD
    if not good.is_dir():
        raise DatasetError(good, "missing folder; expected defect-free training images in train/good")
    train = _image_files(good)
    if not train:
        raise DatasetError(good, f"no images; expected at least one of {', '.join(IMAGE_EXTENSIONS)}")
    test = []
    test_root = path / "test"
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []:
        if folder.name.startswith("."):
            continue
        if folder.name == GOOD:
            test += [TestItem(f, GOOD, None) for f in _image_files(folder)]
            continue
        masks = path / "ground_truth" / folder.name
        if not masks.is_dir():
            raise DatasetError(masks, f"missing folder; test/{folder.name} needs its masks in "
                                      f"ground_truth/{folder.name}/<name>_mask.png")
        for image in _image_files(folder):
            test.append(TestItem(image, folder.name, _find_mask(masks, image)))
    return CategoryIndex(category, path, tuple(train), tuple(test))


def category_kind(category: str) -> str:
    """"texture" for MVTec AD's and the embedded dataset's textures, else "object"."""
    if category in MVTEC_TEXTURES or EMBEDDED_CATEGORIES.get(category, ("",))[0] == "texture":
        return "texture"
    return "object"


_MEMORY_CACHE: dict[tuple, CategoryData | np.ndarray] = {}  # a category, or its train/good alone


def load_category(root: str | os.PathLike, category: str, size: int,
                  cache_dir: str | os.PathLike | None = None) -> CategoryData:
    """Decode one category at `size`×`size`, once per (category, size, content)."""
    index = scan_category(root, category)
    key = (category, size, _content_hash(index))
    disk = Path(cache_dir) / f"{category}-{size}-{key[2][:16]}" if cache_dir else None
    data = _MEMORY_CACHE.get(key)
    if data is None and disk and disk.is_dir():
        data = _read_disk_cache(disk, category, size)
    if data is None:
        data = _decode(index, size)
    if disk and not disk.is_dir():
        _write_disk_cache(disk, data)
    _MEMORY_CACHE[key] = data
    return data


def load_train(root: str | os.PathLike, category: str, size: int) -> np.ndarray:
    """Only the defect-free training images of a category at `size`×`size`. [N, S, S, 3]

    Opens no file under test/ or ground_truth/ (listing them validates the layout, nothing
    more): a trainer that selects on a validation split reads the test split only once, at
    its final evaluation (`load_category`)."""
    index = scan_category(root, category)
    digest = hashlib.blake2b(digest_size=20)
    for path in index.train:
        digest.update(str(path.relative_to(index.path)).encode())
        digest.update(path.read_bytes())
    key = (category, size, "train", digest.hexdigest())
    if key not in _MEMORY_CACHE:
        _MEMORY_CACHE[key] = np.stack([_resize_rgb(read_image(p), size) for p in index.train])
    return _MEMORY_CACHE[key]


def read_image(path: Path) -> np.ndarray:
    """Any image file as 8-bit RGB. [H, W, 3]"""
    return _to_rgb8(_open(path))


def _decode(index: CategoryIndex, size: int) -> CategoryData:
    train = np.stack([_resize_rgb(read_image(p), size) for p in index.train])
    images, masks = [], []
    for item in index.test:
        image = _open(item.path)
        images.append(_resize_rgb(_to_rgb8(image), size))
        if item.mask_path is None:
            masks.append(np.zeros((size, size), np.uint8))
            continue
        mask = _open(item.mask_path)
        if mask.size != image.size:
            raise DatasetError(item.mask_path, f"mask is {mask.size[0]}x{mask.size[1]} but its image "
                                               f"{item.path.name} is {image.size[0]}x{image.size[1]}; "
                                               "expected the same size")
        masks.append(_resize_mask(mask, size))
    shape = (0, size, size)
    return CategoryData(
        name=index.name, kind=category_kind(index.name), size=size, train=train,
        test=np.stack(images) if images else np.zeros(shape + (3,), np.uint8),
        test_masks=np.stack(masks) if masks else np.zeros(shape, np.uint8),
        test_types=tuple(item.defect_type for item in index.test))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_mask(masks: Path, image: Path) -> Path:
    for name in (f"{image.stem}_mask", image.stem):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (masks / f"{name}{ext}", masks / f"{name}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    raise DatasetError(masks / f"{image.stem}_mask.png",
                       f"missing mask for {image.parent.name}/{image.name}; "
                       f"expected ground_truth/{image.parent.name}/{image.stem}_mask.png")


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image; a truncated or non-image file is a DatasetError."""
    if path.stat().st_size == 0:
        raise DatasetError(path, "empty file (0 bytes); expected an image")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(path, f"not a readable image ({error}); expected a complete "
                                 f"{path.suffix.lstrip('.').upper()} file") from None
    return image


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """8-bit RGB from any PIL mode; 16-bit and 32-bit integer images are rescaled. [H, W, 3]"""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image)
        array = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _resize_rgb(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))


def _resize_mask(mask: Image.Image, size: int) -> np.ndarray:
    """Nearest-neighbour resize, then 1 where the value is at least half the mask's maximum. [S, S]"""
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array.max(axis=2)
    array = array.astype(np.float64)
    resized = np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((size, size), Image.NEAREST))
    top = array.max()
    return (resized >= top / 2).astype(np.uint8) if top > 0 else np.zeros((size, size), np.uint8)


def _content_hash(index: CategoryIndex) -> str:
    """Hash of every file's relative path and bytes: the cache key survives copies and renames."""
    digest = hashlib.blake2b(digest_size=20)
    files = list(index.train) + [i.path for i in index.test] + [i.mask_path for i in index.test if i.mask_path]
    for path in files:
        digest.update(str(path.relative_to(index.path)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_disk_cache(folder: Path, data: CategoryData) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for field in ("train", "test", "test_masks"):
            np.save(staging / f"{field}.npy", getattr(data, field))
        (staging / "meta.json").write_text(json.dumps({"kind": data.kind, "test_types": data.test_types}))
        os.rename(staging, folder)
    except OSError:
        pass  # a concurrent writer won; its arrays are identical
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_disk_cache(folder: Path, category: str, size: int) -> CategoryData | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {f: np.load(folder / f"{f}.npy", mmap_mode="r") for f in ("train", "test", "test_masks")}
    except (OSError, ValueError):
        return None
    return CategoryData(name=category, kind=meta["kind"], size=size, test_types=tuple(meta["test_types"]),
                        **arrays)

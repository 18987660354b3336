"""The embedded dataset: deterministic bytes, masks that match the defects, MVTec-free names."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from trainables.data import (EMBEDDED_CATEGORIES, MVTEC_CATEGORIES, category_kind, generate_embedded,
                             load_category, resolve_data)


@pytest.fixture(scope="module")
def embedded():
    return resolve_data("embedded")


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(embedded, tmp_path):
    generate_embedded(tmp_path / "again", seed=0)
    assert tree_digest(tmp_path / "again") == tree_digest(embedded.path)
    category = next(iter(EMBEDDED_CATEGORIES))
    first = (embedded.path / category / "train" / "good" / "000.png").read_bytes()
    generate_embedded(tmp_path / "other", seed=1, categories=(category,))
    assert (tmp_path / "other" / category / "train" / "good" / "000.png").read_bytes() != first


def test_layout_counts_and_names(embedded):
    assert len(embedded.categories) == 15 and embedded.dataset == "embedded"
    assert not set(embedded.categories) & set(MVTEC_CATEGORIES)
    kinds = [category_kind(c) for c in embedded.categories]
    assert kinds.count("texture") == 5 and kinds.count("object") == 10
    for name, (_, defects) in EMBEDDED_CATEGORIES.items():
        assert 2 <= len(defects) <= 4
        n_train = len(list((embedded.path / name / "train" / "good").glob("*.png")))
        assert 60 <= n_train <= 200
        assert not (embedded.path / name / "ground_truth" / "good").exists()


@pytest.mark.parametrize("category", list(EMBEDDED_CATEGORIES))
def test_masks_match_defects(embedded, category):
    data = load_category(embedded.path, category, 128)
    for image, mask, kind in zip(data.test, data.test_masks, data.test_types):
        if kind == "good":
            assert mask.sum() == 0
        else:
            assert 16 <= mask.sum() < 0.2 * mask.size, (category, kind, mask.sum())
    # a defect changes its mask's pixels: they differ from the category's typical good pixels
    # far more than pixels outside the mask do
    good = data.train.astype(float).mean(axis=0)
    inside = [np.abs(img.astype(float) - good)[m == 1].mean()
              for img, m in zip(data.test, data.test_masks) if m.any()]
    outside = [np.abs(img.astype(float) - good)[m == 0].mean()
               for img, m in zip(data.test, data.test_masks) if m.any()]
    assert np.mean(inside) > np.mean(outside), category


def test_mask_files_are_binary_png(embedded):
    for path in list(embedded.path.glob("*/ground_truth/*/*_mask.png"))[:50]:
        values = np.unique(np.asarray(Image.open(path)))
        assert set(values.tolist()) <= {0, 255} and 255 in values

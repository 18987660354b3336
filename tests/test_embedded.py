"""The embedded dataset: deterministic bytes, masks that match the defects, varied good images,
subtle defects, MVTec-free names."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from trainables.data import (EMBEDDED_CATEGORIES, MVTEC_CATEGORIES, category_kind, generate_embedded,
                             load_category, resolve_data)
from trainables.data.embedded import MASK_THRESHOLD, N_TEST_PER_DEFECT, render_sample


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
        assert 2 <= len(defects) <= 4 and len(set(defects)) == len(defects)
        n_train = len(list((embedded.path / name / "train" / "good").glob("*.png")))
        assert 60 <= n_train <= 200
        assert not (embedded.path / name / "ground_truth" / "good").exists()
        for defect in defects:
            assert len(list((embedded.path / name / "test" / defect).glob("*.png"))) == N_TEST_PER_DEFECT


def test_files_are_the_rendered_samples(embedded):
    """What is on disk is what render_sample returns (so the twin tests below test the files)."""
    for name, (_, defects) in list(EMBEDDED_CATEGORIES.items())[::4]:
        image, mask, _ = render_sample(name, defects[-1], 3)
        assert np.array_equal(np.asarray(Image.open(embedded.path / name / "test" / defects[-1] / "003.png")), image)
        saved = np.asarray(Image.open(embedded.path / name / "ground_truth" / defects[-1] / "003_mask.png"))
        assert np.array_equal(saved > 127, mask)


@pytest.mark.parametrize("category", list(EMBEDDED_CATEGORIES))
def test_defects_change_only_their_mask_and_are_subtle(category):
    """A defect image equals its defect-free twin outside the mask; inside, most pixels changed;
    the defect is small (MVTec-like), and low-contrast on average."""
    _, defects = EMBEDDED_CATEGORIES[category]
    faint = []
    for defect in defects:
        areas, contrasts = [], []
        for k in range(N_TEST_PER_DEFECT):
            image, mask, twin = render_sample(category, defect, k)
            diff = np.abs(image.astype(int) - twin.astype(int)).max(axis=2)
            assert not diff[~mask].any(), (category, defect, k)
            assert (diff[mask] > 0).mean() > 0.6, (category, defect, k)
            assert (diff[mask] > MASK_THRESHOLD).any()
            areas.append(mask.mean())
            contrasts.append(diff[mask].mean())
        assert 12 / 128 ** 2 <= min(areas) and max(areas) < 0.12, (category, defect, areas)
        assert np.median(areas) < 0.03, (category, defect)       # small: under 3% of the image
        assert np.median(contrasts) < 100, (category, defect)    # grey levels: not a saturated blot
        faint.append(np.median(contrasts))
    assert np.median(faint) < 70, (category, faint)              # most defect types are faint


@pytest.mark.parametrize("category", list(EMBEDDED_CATEGORIES))
def test_good_images_vary(category):
    """Good images differ from each other (pose, lighting, texture phase), not only by noise,
    and no two are alike; the variation is small next to the image itself."""
    images = np.stack([render_sample(category, "train", k)[0] for k in range(6)]).astype(float)
    brightness = images.mean(axis=(1, 2, 3))
    assert brightness.std() > 0.5, brightness
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            assert np.abs(images[a] - images[b]).mean() > 3.0, (category, a, b)
    assert brightness.std() < 0.15 * brightness.mean()


@pytest.mark.parametrize("category", list(EMBEDDED_CATEGORIES))
def test_masks_load_and_good_masks_are_empty(embedded, category):
    data = load_category(embedded.path, category, 128)
    kinds = set(data.test_types)
    assert kinds == {"good", *EMBEDDED_CATEGORIES[category][1]}
    for mask, kind in zip(data.test_masks, data.test_types):
        if kind == "good":
            assert mask.sum() == 0
        else:
            assert 12 <= mask.sum() < 0.12 * mask.size, (category, kind, mask.sum())


def test_mask_files_are_binary_png(embedded):
    for path in list(embedded.path.glob("*/ground_truth/*/*_mask.png"))[:50]:
        values = np.unique(np.asarray(Image.open(path)))
        assert set(values.tolist()) <= {0, 255} and 255 in values

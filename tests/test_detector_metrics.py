"""Detection metrics against scikit-learn and an independent, threshold-by-threshold AUPRO."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from trainables.detector.metrics import UNAVAILABLE, aupro, auroc, average_precision, detection_metrics


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and heavy ties
def test_auroc_and_ap_match_sklearn(decimals):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    scores = rng.random(3000) + 0.4 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """The MVTec AD recipe spelled out: threshold, label regions per image, average overlaps."""
    masks = masks.astype(bool)
    regions = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fpr = (predicted & ~masks).sum() / (~masks).sum()
        overlaps = [(predicted[k] & (labels == r)).sum() / (labels == r).sum()
                    for k, labels in enumerate(regions) for r in range(1, labels.max() + 1)]
        points.append((fpr, float(np.mean(overlaps))))
    fpr, pro = np.array(points).T
    area, previous = 0.0, (0.0, 0.0)
    for x, y in zip(fpr[1:], pro[1:]):
        if x > limit:  # close the last trapezoid at the limit by linear interpolation
            y_limit = previous[1] + (y - previous[1]) * (limit - previous[0]) / (x - previous[0])
            area += (limit - previous[0]) * (previous[1] + y_limit) / 2
            break
        area += (x - previous[0]) * (previous[1] + y) / 2
        previous = (x, y)
    return area / limit


def blobs(rng, n=4, size=16):
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n - 1):  # the last image is defect-free
        for _ in range(int(rng.integers(1, 3))):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 5, 2)
            masks[k, y:y + h, x:x + w] = 1
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_an_independent_reference(seed):
    rng = np.random.default_rng(seed)
    masks = blobs(rng)
    maps = np.round(rng.random(masks.shape) * 0.7 + 0.5 * masks * rng.random(masks.shape), 2)  # with ties
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)
    assert aupro(masks, maps, 1.0) == pytest.approx(reference_aupro(masks, maps, 1.0), abs=1e-9)


def test_aupro_weighs_regions_not_pixels():
    masks = np.zeros((1, 20, 20), np.uint8)
    masks[0, 0:10, 0:10] = 1    # a large region, missed
    masks[0, 15, 15] = 1        # a one-pixel region, found
    maps = np.zeros((1, 20, 20))
    maps[0, 15, 15] = 1.0
    # curve points (0, 0), (0, 0.5) and (1, 1): mean height on [0, 0.3] is (0.5 + 0.65) / 2
    assert aupro(masks, maps) == pytest.approx(0.575)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)


def test_detection_metrics_names_and_unavailable():
    rng = np.random.default_rng(0)
    masks = blobs(rng)
    maps = rng.random(masks.shape)
    labels = masks.reshape(len(masks), -1).max(axis=1)
    out = detection_metrics(labels, maps.max(axis=(1, 2)), masks, maps)
    assert set(out) == {"image_AUROC", "image_AP", "pixel_AUROC", "pixel_AP", "pixel_AUPRO"}
    only_good = detection_metrics(np.zeros(3), rng.random(3), np.zeros((3, 8, 8)), rng.random((3, 8, 8)))
    assert only_good["image_AUROC"] == UNAVAILABLE and only_good["pixel_AP"] == UNAVAILABLE
    assert "both" in only_good["image_AUROC_note"]

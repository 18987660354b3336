"""Anomaly-detection metrics: image/pixel AUROC and AP, and AUPRO up to FPR 0.3 (docs/detector.md §5.2).

AUROC and AP follow scikit-learn's definitions exactly (ties grouped, AP as the step sum
Σ (R_n − R_{n−1}) P_n) but run on one sort, so all the pixels of a category (≈10^8 on MVTec
AD at 256 px) fit. AUPRO is the MVTec AD per-region overlap: regions are the 8-connected
components of each ground-truth mask; PRO(t) is the mean over regions of the covered
fraction, FPR(t) is over all defect-free pixels; the PRO–FPR curve is integrated up to
FPR 0.3 and divided by 0.3. Every threshold (every distinct score) is a curve point.
Metric names are `image_AUROC`, `image_AP`, `pixel_AUROC`, `pixel_AP`, `pixel_AUPRO`;
a metric that cannot be computed is the string "unavailable" plus a `<name>_note`.
"""

import numpy as np
from scipy import ndimage

UNAVAILABLE = "unavailable"


def _curve(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """Cumulative (true, false) counts at each distinct threshold, scores descending."""
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    labels = labels[order].astype(np.float64)
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels if weights is None else weights[order])[distinct]
    fps = np.cumsum(1.0 - labels)[distinct]
    return tps, fps


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (= sklearn.metrics.roc_auc_score)."""
    labels, scores = np.ravel(labels), np.ravel(scores)
    tps, fps = _curve(labels, scores)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (= sklearn.metrics.average_precision_score)."""
    labels, scores = np.ravel(labels), np.ravel(scores)
    tps, fps = _curve(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit`; masks {0,1} and maps [M, H, W]."""
    masks = np.asarray(masks).astype(bool)
    weights = np.zeros(masks.shape, np.float64)
    n_regions = 0
    structure = np.ones((3, 3))
    for k in range(len(masks)):
        regions, count = ndimage.label(masks[k], structure=structure)
        for r in range(1, count + 1):
            region = regions == r
            weights[k][region] = 1.0 / region.sum()
        n_regions += count
    # a defect pixel adds 1/(|region|·R) to PRO once the threshold reaches its score
    pro, fps = _curve(masks.ravel(), np.asarray(maps, np.float64).ravel(), weights.ravel() / n_regions)
    fpr = np.r_[0.0, fps / fps[-1]]
    pro = np.r_[0.0, pro]
    return integrate_up_to(fpr, pro, fpr_limit) / fpr_limit


def integrate_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y), x non-decreasing, from x[0] to `limit` (y interpolated there)."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < len(x):
        j = int(np.argmax(~inside))  # first point beyond the limit
        y_limit = y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.trapezoid(ys, xs))


def detection_metrics(image_labels: np.ndarray, image_scores: np.ndarray,
                      masks: np.ndarray, maps: np.ndarray, aupro_limit: float = 0.3) -> dict:
    """All five metrics of one category; "unavailable" (+ note) where a class is missing."""
    out: dict = {}
    labels = np.asarray(image_labels)
    if 0 < labels.sum() < len(labels):
        out["image_AUROC"] = auroc(labels, image_scores)
        out["image_AP"] = average_precision(labels, image_scores)
    else:
        for name in ("image_AUROC", "image_AP"):
            out[name] = UNAVAILABLE
            out[f"{name}_note"] = "the test split needs both good and defective images"
    masks = np.asarray(masks).astype(np.uint8)
    if 0 < masks.sum() < masks.size:
        out["pixel_AUROC"] = auroc(masks, maps)
        out["pixel_AP"] = average_precision(masks, maps)
        out["pixel_AUPRO"] = aupro(masks, maps, aupro_limit)
    else:
        for name in ("pixel_AUROC", "pixel_AP", "pixel_AUPRO"):
            out[name] = UNAVAILABLE
            out[f"{name}_note"] = "the test masks need both defect and defect-free pixels"
    return out

"""The detector's validation split: held out of training, deterministic, and read instead of
the test split until the final evaluation."""

import builtins
import io

import numpy as np
import pytest

from detector_fixtures import make_detector_dataset
from trainables.data import load_train, resolve_data
from trainables.detector.synthesis import build_source_pool
from trainables.detector.config import make_config
from trainables.detector.train import synthesis_params, train_detector
from trainables.detector.validation import split_train, validation_set
from trainables.errors import UserInputError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_detector_dataset(tmp_path_factory.mktemp("val"), n_train=10)


def _validation(root, category="disc", seed=0, fraction=0.3, source="mvtec"):
    cfg = make_config("tiny", {"data": str(root), "category": category, "anomaly_source": source})
    images = load_train(root, category, 32)
    kept, held = split_train(len(images), fraction, seed)
    pool = build_source_pool(source, resolve_data(root), category, 32, cfg.source_per_category, None, cfg.seed)
    kind = "texture" if category == "carpet" else "object"
    return images, kept, held, validation_set(images, held, kind, pool, synthesis_params(cfg), seed)


def test_held_out_images_are_disjoint_from_training_and_the_set_is_deterministic(root):
    images, kept, held, val = _validation(root)
    assert len(held) == 3 and sorted({*kept, *held}) == list(range(10)) and not set(kept) & set(held)
    # the training images (what the synthesizer draws from) contain no held-out picture
    flat = {images[k].tobytes() for k in kept}
    assert not any(val.images[j].tobytes() in flat for j in range(len(val.images)))
    assert np.array_equal(val.images[0::2], images[held]) and list(val.labels[0::2]) == [0, 0, 0]
    assert val.labels[1::2].all() and val.masks[0::2].sum() == 0 and all(m.any() for m in val.masks[1::2])
    outside = ~val.masks[1::2].astype(bool)
    assert np.array_equal(val.images[1::2][outside], images[held][outside])  # the anomaly is only inside M
    again = _validation(root)[3]
    assert all(np.array_equal(getattr(val, f), getattr(again, f)) for f in ("images", "masks", "labels"))
    other = _validation(root, seed=1)[3]
    assert other.held != val.held  # the split follows val_seed
    dtd = _validation(root, source="dtd")[3]  # another appearance source: same images, other anomalies
    assert dtd.held == val.held and np.array_equal(dtd.images[0::2], val.images[0::2])
    assert not np.array_equal(dtd.images[1::2], val.images[1::2])


def test_split_edge_cases():
    assert len(split_train(5, 0.0, 0)[1]) == 0
    assert len(split_train(5, 0.01, 0)[1]) == 1 and len(split_train(5, 0.99, 0)[0]) == 1
    with pytest.raises(UserInputError, match="at least 2"):
        split_train(1, 0.2, 0)
    with pytest.raises(UserInputError, match="val_fraction"):
        make_config("tiny", {"category": "disc", "val_fraction": 1.0})


def test_no_test_file_is_opened_before_the_final_evaluation(root, monkeypatch):
    """A spy on every file open (Python's and PIL's): each non-final report records whether a
    test/ or ground_truth/ file was opened so far; the final evaluation must open them."""
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)  # pathlib's read_bytes opens through io.open
    from trainables.data import mvtec

    monkeypatch.setattr(mvtec, "_MEMORY_CACHE", {})  # nothing decoded by an earlier test

    def test_files_opened() -> bool:
        return any("/test/" in p or "/ground_truth/" in p for p in opened)

    seen = []

    def report(metrics, checkpoint=None):
        seen.append((metrics.get("final", 0), test_files_opened(), metrics.get("val_image_AUROC")))

    cfg = make_config("tiny", {"data": str(root), "category": "disc", "val_fraction": 0.3, "epochs": 3,
                               "steps_per_epoch": 1})
    final = train_detector(cfg, report)
    assert [final for final, _, _ in seen] == [0, 0, 1]
    assert not any(opened_so_far for is_final, opened_so_far, _ in seen if not is_final)
    assert all(0 <= v <= 1 for _, _, v in seen)  # every report, the final one too, carries the validation metric
    assert test_files_opened() and 0 <= final["image_AUROC"] <= 1  # the spy sees the final evaluation's opens
    assert final["train_images"] == 7 and final["val_images"] == 6

"""Anomaly synthesis: mask ⊆ foreground, I_a = I outside M, clean fraction, source pools."""

import math

import numpy as np
import PIL.Image
import pytest

from detector_fixtures import make_detector_dataset
from trainables.data import resolve_data
from trainables.data.mvtec import read_image
from trainables.detector.synthesis import (AUGMENTERS, AnomalySynthesizer, SynthesisParams, augment,
                                           build_source_pool, foreground_mask, perlin_mask, perlin_noise)
from trainables.errors import UserInputError


def disc_images(n: int = 6, size: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        disc = np.hypot(x - rng.uniform(-0.1, 0.1), y - rng.uniform(-0.1, 0.1)) < 0.25
        images.append(np.where(disc[..., None], [220, 200, 90], [25, 30, 35]) + rng.normal(0, 4, (size, size, 3)))
    return np.clip(np.stack(images), 0, 255).astype(np.uint8)


def pool_of(images: np.ndarray):
    from trainables.detector.synthesis import SourcePool

    return SourcePool(images, "mvtec", "test", False)


def test_foreground_of_an_object_covers_it_and_not_the_background():
    image = disc_images(1)[0]
    fg = foreground_mask(image)
    bright = image.mean(axis=2) > 100
    assert fg[bright].mean() > 0.99            # the whole object
    assert fg.mean() < bright.mean() * 1.6     # and not much more (dilation only)


def test_mask_inside_foreground_and_image_unchanged_outside_mask():
    images = disc_images()
    synth = AnomalySynthesizer(images, "object", pool_of(disc_images(3)[:, ::-1].copy()),
                               SynthesisParams(rot_p=0.5))
    batch = synth.batch(np.random.default_rng(1), 200)
    M, FG, I, I_a = batch["M"].astype(bool), batch["FG"], batch["I"], batch["I_a"]
    assert FG.mean() < 0.5                     # foreground-aware: objects are not the whole image
    assert not (M & ~FG).any()                 # M ⊆ FG, rotated samples included
    outside = np.broadcast_to(~M, I.shape)
    assert np.array_equal(I_a[outside], I[outside])   # bit-exact outside the mask
    inside = np.broadcast_to(M, I.shape)
    assert np.abs(I_a[inside] - I[inside]).mean() > 0.02  # and changed inside it
    assert np.array_equal(batch["y"], M.reshape(len(M), -1).any(axis=1))


def test_clean_fraction_is_one_minus_p_anom():
    synth = AnomalySynthesizer(disc_images(4, 32), "texture", pool_of(disc_images(2, 32)), SynthesisParams())
    batch = synth.batch(np.random.default_rng(0), 2000)
    clean = 1 - batch["y"].mean()
    assert 0.45 < clean < 0.56, clean          # p_anom 0.5 (+ rare empty Perlin masks)
    assert (batch["M"][batch["y"] == 0] == 0).all()


def test_batches_are_a_function_of_the_seed():
    synth = AnomalySynthesizer(disc_images(4, 32), "object", pool_of(disc_images(2, 32)), SynthesisParams())
    a, b = (synth.batch(np.random.default_rng([0, 0, 7]), 4) for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("size, res", [(64, (4, 8)), (48, (1, 16)), (50, (2, 3))])
def test_perlin_noise_is_the_textbook_formula_pixel_by_pixel(size, res):
    """Each pixel on its own: the gradients of the 4 lattice corners around it, dotted with the
    offsets to them, blended by the quintic fade, times sqrt 2 (docs/detector.md §3.2)."""
    noise = perlin_noise(np.random.default_rng(3), size, res)
    angles = np.random.default_rng(3).uniform(0, 2 * math.pi, (res[0] + 1, res[1] + 1))

    def at(y: int, x: int) -> float:
        ty, tx = y / size * res[0], x / size * res[1]
        i, j = math.floor(ty), math.floor(tx)
        fy, fx = ty - i, tx - j
        dot = {(dy, dx): math.cos(angles[i + dy, j + dx]) * (fy - dy) + math.sin(angles[i + dy, j + dx]) * (fx - dx)
               for dy in (0, 1) for dx in (0, 1)}
        fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3  # noqa: E731
        top = dot[0, 0] + fade(fx) * (dot[0, 1] - dot[0, 0])
        bottom = dot[1, 0] + fade(fx) * (dot[1, 1] - dot[1, 0])
        return math.sqrt(2) * (top + fade(fy) * (bottom - top))

    pixels = np.random.default_rng(4).integers(0, size, (200, 2))
    assert noise.shape == (size, size)
    np.testing.assert_allclose([noise[y, x] for y, x in pixels], [at(y, x) for y, x in pixels], atol=1e-12)


def test_perlin_mask_and_augmenters_keep_shape_and_type():
    rng = np.random.default_rng(0)
    masks = [perlin_mask(rng, 64) for _ in range(50)]
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks)
    assert 0.01 < np.mean([m.mean() for m in masks]) < 0.5 and sum(m.any() for m in masks) > 25
    image = disc_images(1, 32)[0]
    for augmenter in AUGMENTERS:
        out = augmenter(rng, image)
        assert out.shape == image.shape and out.dtype == np.uint8, augmenter.__name__
    assert augment(rng, image).shape == image.shape


def test_mvtec_source_reads_only_other_categories_training_images(tmp_path, monkeypatch):
    make_detector_dataset(tmp_path, garbage_tests=True)  # opening any test file would raise
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    root = resolve_data(tmp_path)
    pool = build_source_pool("mvtec", root, "disc", 32)
    assert opened and not any("/test/" in p or "/ground_truth/" in p or "/disc/" in p for p in opened)
    expected = np.stack([read_image(p) for c in ("blob", "carpet")
                         for p in sorted((tmp_path / c / "train" / "good").iterdir())])
    assert np.array_equal(np.sort(pool.images.reshape(len(pool.images), -1), axis=0),
                          np.sort(expected.reshape(len(expected), -1), axis=0))
    assert pool.leaky is False
    assert len(build_source_pool("mvtec", root, "disc", 32, per_category=2).images) == 4


def test_defect_source_is_tagged_leaky_and_skips_the_evaluated_category(tmp_path):
    make_detector_dataset(tmp_path)
    (tmp_path / "disc" / "test" / "dent" / "000.png").write_bytes(b"broken")  # never read for disc
    pool = build_source_pool("mvtec_defects", resolve_data(tmp_path), "disc", 32)
    assert pool.leaky is True and len(pool.images) == 2 * 3  # 3 defect images in each other category


def test_dtd_source_falls_back_to_procedural_and_bad_sources_are_user_errors(tmp_path):
    make_detector_dataset(tmp_path)
    root = resolve_data(tmp_path)
    pool = build_source_pool("dtd", root, "disc", 32)
    assert pool.origin == "procedural" and pool.images.shape[1:] == (32, 32, 3)
    with pytest.raises(UserInputError, match="anomaly_source='imagenet'"):
        build_source_pool("imagenet", root, "disc", 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_batches_equal_the_in_line_synthesis_of_each_seed_rank_step(workers):
    """Loader processes interleave steps (worker w makes every W-th), yet step s's batch is
    exactly synth.batch(default_rng([seed, rank, s])): resume and the in-line path agree."""
    from trainables.detector.pipeline import batches

    synth = AnomalySynthesizer(disc_images(4, 32), "object", pool_of(disc_images(2, 32)), SynthesisParams())
    seed, rank, start, stop = 5, 1, 3, 10
    made = list(batches(synth, seed, rank, 3, start, stop, workers=workers))
    assert [int(b["step"]) for b in made] == list(range(start, stop))
    for step, batch in zip(range(start, stop), made):
        expected = synth.batch(np.random.default_rng([seed, rank, step]), 3)
        assert all(np.array_equal(batch[k].numpy(), expected[k]) for k in expected), step
    other_rank = next(batches(synth, seed, 0, 3, start, stop, workers=workers))
    assert not np.array_equal(other_rank["I_a"].numpy(), made[0]["I_a"].numpy())


def test_pipeline_closed_early_ends_its_workers():
    import multiprocessing

    from trainables.detector.pipeline import batches

    synth = AnomalySynthesizer(disc_images(4, 32), "texture", pool_of(disc_images(2, 32)), SynthesisParams())
    stream = batches(synth, 0, 0, 2, 0, 1000, workers=2)
    next(stream)
    assert len(multiprocessing.active_children()) >= 2
    stream.close()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_default_loader_workers_follow_the_device_and_the_trials_cpus(monkeypatch):
    import trainables.detector.pipeline as pipeline

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(16)))  # a node's CPUs
    for threads, workers in [(1, 0), (3, 2), (8, 4)]:                                  # the trial's CPUs
        monkeypatch.setattr(pipeline.torch, "get_num_threads", lambda: threads)
        assert pipeline.default_workers("cuda:0") == workers, threads
        assert pipeline.default_workers("cpu") == 0

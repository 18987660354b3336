"""The MVTec-layout reader: malformed datasets fail with one line naming the path; awkward ones load."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import make_category, write_image
from trainables.data import list_categories, load_category, scan_category
from trainables.errors import DatasetError

SIZE = 16


def load(root, name="widget"):
    return load_category(root, name, SIZE)


def assert_error_names(root, path_fragment, expected_words, name="widget"):
    with pytest.raises(DatasetError) as error:
        load(root, name)
    message = str(error.value)
    assert path_fragment in error.value.path, (path_fragment, error.value.path)
    assert "\n" not in message
    for word in expected_words:
        assert word in message, (word, message)


# ---- malformed: each one error naming the offending path

def test_missing_train_good(tmp_path):
    (tmp_path / "widget" / "test" / "good").mkdir(parents=True)
    assert_error_names(tmp_path, "widget/train/good", ["missing folder", "train/good"])


def test_empty_train_good(tmp_path):
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    (tmp_path / "widget" / "train" / "good" / "readme.txt").write_text("not an image")
    assert_error_names(tmp_path, "widget/train/good", ["no images"])


def test_defect_folder_without_ground_truth(dataset):
    import shutil
    shutil.rmtree(dataset / "widget" / "ground_truth" / "dent")
    assert_error_names(dataset, "widget/ground_truth/dent", ["missing folder", "test/dent"])


def test_missing_mask(dataset):
    (dataset / "widget" / "ground_truth" / "dent" / "001_mask.png").unlink()
    assert_error_names(dataset, "ground_truth/dent/001_mask.png", ["missing mask", "dent/001.png"])


def test_mask_size_differs_from_image(dataset):
    write_image(dataset / "widget" / "ground_truth" / "dent" / "000_mask.png", np.zeros((20, 24), np.uint8))
    assert_error_names(dataset, "ground_truth/dent/000_mask.png", ["24x20", "24x24", "same size"])


def test_truncated_png(dataset):
    path = dataset / "widget" / "train" / "good" / "001.png"
    path.write_bytes(path.read_bytes()[:60])
    assert_error_names(dataset, "train/good/001.png", ["not a readable image"])


def test_zero_byte_image(dataset):
    (dataset / "widget" / "test" / "good" / "000.png").write_bytes(b"")
    assert_error_names(dataset, "test/good/000.png", ["empty file"])


def test_text_file_with_image_extension(dataset):
    (dataset / "widget" / "test" / "dent" / "000.png").write_text("definitely not a PNG")
    assert_error_names(dataset, "test/dent/000.png", ["not a readable image"])


def test_unknown_category_lists_what_exists(dataset):
    with pytest.raises(DatasetError, match=r"no such category; found \['widget'\]"):
        load(dataset, "gizmo")


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        list_categories(tmp_path / "nope")


# ---- awkward but valid: each loads cleanly

def test_grayscale_images_become_rgb(tmp_path):
    write_image(tmp_path / "widget" / "train" / "good" / "000.png", np.full((SIZE, SIZE), 77, np.uint8))
    data = load(tmp_path)
    assert data.train.shape == (1, SIZE, SIZE, 3) and data.train.dtype == np.uint8
    assert (data.train == 77).all()


def test_rgba_images_drop_alpha(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    write_image(tmp_path / "widget" / "train" / "good" / "000.png", rgba)
    data = load(tmp_path)
    assert data.train.shape == (1, SIZE, SIZE, 3)
    assert (data.train[..., 0] == 200).all() and (data.train[..., 1:] == 0).all()


def test_16bit_images_rescale_to_8bit(tmp_path):
    array = np.zeros((SIZE, SIZE), np.uint16)
    array[:, SIZE // 2:] = 65535
    array[:, :SIZE // 2] = 32896  # 128.5 * 257 -> 128 after rescaling
    write_image(tmp_path / "widget" / "train" / "good" / "000.png", array)
    data = load(tmp_path)
    assert set(np.unique(data.train)) == {128, 255}


def test_non_image_files_are_ignored(dataset):
    for name in (".DS_Store", "Thumbs.db", "notes.txt"):
        (dataset / "widget" / "train" / "good" / name).write_bytes(b"\x00junk")
        (dataset / "widget" / "test" / "dent" / name).write_bytes(b"\x00junk")
    (dataset / ".hidden_category").mkdir()
    data = load(dataset)
    assert len(data.train) == 3 and data.test_types.count("dent") == 2
    assert list_categories(dataset) == ["widget"]


def test_differing_image_sizes_are_resized(tmp_path):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(30, 40), (16, 16), (64, 20)]):
        write_image(tmp_path / "widget" / "train" / "good" / f"{k}.png", rng.integers(0, 256, (h, w, 3), np.uint8))
    assert load(tmp_path).train.shape == (3, SIZE, SIZE, 3)


def test_only_good_test_images_loads_with_undefined_metrics(tmp_path):
    make_category(tmp_path, defects=())
    data = load(tmp_path)
    assert data.defect_types == () and not data.has_both_labels
    assert data.test_labels.tolist() == [0, 0] and data.test_masks.sum() == 0


def test_masks_binarise_at_half_their_maximum_after_nearest_resize(tmp_path):
    make_category(tmp_path, size=32)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 1          # stored as 0/1, not 0/255: still a defect
    write_image(tmp_path / "widget" / "ground_truth" / "dent" / "000_mask.png", mask)
    mask = np.zeros((32, 32), np.uint8)
    mask[:16], mask[16:] = 100, 255  # 100 < 255/2: background
    write_image(tmp_path / "widget" / "ground_truth" / "dent" / "001_mask.png", mask)
    data = load(tmp_path)
    masks = data.test_masks[np.array(data.test_types) == "dent"]
    assert set(np.unique(masks)) == {0, 1}
    assert (masks[0][:, :8] == 1).all() and (masks[0][:, 8:] == 0).all()
    assert (masks[1][:8] == 0).all() and (masks[1][8:] == 1).all()


def test_any_category_folder_name_works_and_labels_follow_folders(tmp_path):
    make_category(tmp_path, "my_product_line_7", defects=("scuff", "chip"), n_per_defect=3)
    data = load(tmp_path, "my_product_line_7")
    assert data.defect_types == ("chip", "scuff")
    assert data.test_labels.sum() == 6 and len(data.test_types) == 8
    images, masks = data.defects("scuff")
    assert images.shape == (3, SIZE, SIZE, 3) and masks.shape == (3, SIZE, SIZE)
    assert masks.reshape(3, -1).sum(1).min() > 0


def test_decoded_arrays_are_cached_in_memory_and_on_disk(dataset, tmp_path_factory):
    from trainables.data import mvtec

    cache = tmp_path_factory.mktemp("cache")
    first = load_category(dataset, "widget", SIZE, cache_dir=cache)
    assert load_category(dataset, "widget", SIZE, cache_dir=cache) is first
    assert len(list(cache.glob("widget-16-*/train.npy"))) == 1
    mvtec._MEMORY_CACHE.clear()
    again = load_category(dataset, "widget", SIZE, cache_dir=cache)
    assert isinstance(again.train, np.memmap)
    np.testing.assert_array_equal(again.test_masks, first.test_masks)
    # changing a file's content changes the key: no stale arrays
    write_image(dataset / "widget" / "train" / "good" / "000.png", np.zeros((24, 24, 3), np.uint8))
    assert (load_category(dataset, "widget", SIZE, cache_dir=cache).train[0] == 0).all()


def test_scan_reports_files_without_decoding(dataset):
    index = scan_category(dataset, "widget")
    assert len(index.train) == 3 and len(index.test) == 4
    assert all(item.mask_path.name.endswith("_mask.png") for item in index.test if item.defect_type != "good")


# ---- the CLI

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "platform.data", *args], capture_output=True, text=True)


def test_cli_check_prints_summary(dataset):
    result = run_cli("check", str(dataset))
    assert result.returncode == 0, result.stderr
    assert "widget" in result.stdout and "dent (2)" in result.stdout and "colour" in result.stdout


def test_cli_check_malformed_is_one_line_and_exit_2(dataset):
    (dataset / "widget" / "ground_truth" / "dent" / "000_mask.png").unlink()
    result = run_cli("check", str(dataset))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "000_mask.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_check_unknown_category_flag(dataset):
    result = run_cli("check", str(dataset), "--categories", "gizmo")
    assert result.returncode == 2 and "--categories ['gizmo']" in result.stderr

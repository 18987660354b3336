"""Plots: each writes a valid PNG with the planned panels, and a missing value is drawn blank,
not as zero."""

import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from platform import plots, stats

GROUPS = [f"row {r}" for r in range(2, 9)]
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP")


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def summary(missing=None) -> dict:
    """{metric: {group: (mean, low, high)}} with one (metric, group) cell NaN."""
    rows = {m: {g: (0.97 + 0.003 * i, 0.965 + 0.003 * i, 0.975 + 0.003 * i) for i, g in enumerate(GROUPS)}
            for m in METRICS}
    if missing:
        rows[missing[0]][missing[1]] = (math.nan,) * 3
    return rows


def test_ablation_bars_one_panel_per_metric(tmp_path):
    path = tmp_path / "figs" / "ablation.png"
    titles = plots.plot_ablation_bars(summary(("pixel_AP", "row 3")), path, paper=plots.paper_marks())
    assert_png(path)
    assert titles == ["image AUROC", "pixel AUROC", "pixel AP", "image AP"]
    assert plots.paper_marks()["image_AUROC"]["row 7"] == 99.70


def test_a_missing_bar_is_blank_not_zero():
    fig = Figure()
    ax = fig.add_subplot()
    plots._bars(ax, "pixel_AP", summary(("pixel_AP", "row 3"))["pixel_AP"], GROUPS, None, "row 7")
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == len(GROUPS)
    assert math.isnan(heights[1]) and all(h > 0 for k, h in enumerate(heights) if k != 1)
    assert "n/a" in [t.get_text() for t in ax.texts]
    bottom, _ = ax.get_ylim()
    assert bottom > 90  # zoomed near the values, a NaN did not pull the axis to 0
    # percent scale: the labels are the means x 100
    assert "97.00" in [t.get_text() for t in ax.texts]


def test_heatmap_annotates_values_and_leaves_missing_cells_blank(tmp_path):
    cells = {("weave", "row 7"): 0.991, ("weave", "row 5"): math.nan, ("bolt", "row 7"): 0.0,
             ("bolt", "row 5"): 0.95}  # ("tile", "row 5") absent, a real 0.0 present
    cells[("tile", "row 7")] = 0.97
    path = tmp_path / "heat.png"
    assert plots.plot_category_heatmap(cells, path, groups=["row 5", "row 7"]) == \
        ["image AUROC (%) per category and row (blank: no value)"]
    assert_png(path)

    fig = Figure()
    ax = fig.add_subplot()
    plots._heatmap(ax, cells, "image_AUROC", ["bolt", "tile", "weave"], ["row 5", "row 7"])
    grid = ax.images[0].get_array()
    assert np.ma.getmaskarray(grid).tolist() == [[False, False], [True, False], [True, False]]
    assert grid[0, 1] == 0.0 and grid[2, 1] == pytest.approx(99.1)
    assert sorted(t.get_text() for t in ax.texts) == sorted(["95.0", "0.0", "97.0", "99.1"])
    # the colour of a masked cell is the 'bad' colour: white
    assert ax.images[0].get_cmap().get_bad().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_heatmap_pixels_of_a_missing_cell_are_white_and_of_a_zero_are_not():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cells = {("a", "row 5"): 0.9, ("a", "row 7"): math.nan, ("b", "row 5"): 0.0, ("b", "row 7"): 0.5}
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    plots._heatmap(ax, cells, "image_AUROC", ["a", "b"], ["row 5", "row 7"])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    height = rgb.shape[0]

    def pixel(col, row):  # a point a quarter cell off the centre, clear of the annotation
        x, y = ax.transData.transform((col + 0.3, row + 0.3))
        return rgb[height - 1 - int(y), int(x)].tolist()

    assert pixel(1, 0) == [255, 255, 255]   # (a, row 7): NaN
    assert pixel(0, 1) != [255, 255, 255]   # (b, row 5): a real 0
    assert pixel(0, 1) != pixel(0, 0)       # 0 and 90% get different colours


def test_training_curves_one_panel_per_group(tmp_path):
    steps = list(range(10))
    curves = {"row 7": [(f"weave-s{s}", steps, [0.5 + 0.04 * t for t in steps]) for s in range(3)],
              "row 5": [("weave-s0", steps, [0.5] * 5 + [math.nan] + [0.6] * 4)],
              "row 2": [(f"c{k}-s0", steps, [0.4] * 10) for k in range(15)]}
    path = tmp_path / "curves.png"
    assert plots.plot_training_curves(curves, path, "image_AUROC", percent=True) == ["row 7", "row 5", "row 2"]
    assert_png(path)

    fig = plots._figure(3, ncols=3, panel=(4, 3), sharey=True)
    assert len(fig.axes) == 3
    fig = plots._figure(4, ncols=3, panel=(4, 3))
    assert len(fig.axes) == 4  # no empty fifth and sixth panel


def test_curves_keep_nan_as_a_gap(tmp_path, monkeypatch):
    drawn = {}
    real_save = plots._save

    def keep(fig, path):
        drawn["fig"] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    steps = [0, 1, 2]
    plots.plot_training_curves({"row 5": [("a", steps, [0.5, math.nan, 0.7])]}, tmp_path / "c.png", "image_AUROC",
                               percent=True)
    (line,) = drawn["fig"].axes[0].lines
    y = line.get_ydata()
    assert y[0] == 50 and math.isnan(y[1]) and y[2] == pytest.approx(70)


def test_from_stats_to_pictures(tmp_path):
    values = {(g, c, s): 0.95 + 0.005 * i + 0.001 * s for i, g in enumerate(GROUPS)
              for c in ("weave", "bolt", "tile") for s in (0, 1)}
    rows = {m: stats.row_means(values, n_resamples=200) for m in ("image_AUROC", "pixel_AP")}
    assert list(rows["pixel_AP"]) == GROUPS  # the plan's order, not sorted text
    assert plots.plot_ablation_bars(rows, tmp_path / "a.png") == ["image AUROC", "pixel AP"]
    cells = stats.cell_means(values)
    assert cells["weave", "row 2"] == pytest.approx(0.9505)
    assert plots.plot_category_heatmap(cells, tmp_path / "h.png")[0].startswith("image AUROC (%)")


def test_nothing_to_draw_is_an_error_not_an_empty_picture(tmp_path):
    with pytest.raises(ValueError, match="no metric"):
        plots.plot_ablation_bars({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no cell"):
        plots.plot_category_heatmap({}, tmp_path / "h.png")
    with pytest.raises(ValueError, match="no row"):
        plots.plot_training_curves({}, tmp_path / "c.png", "loss")
    assert not list(tmp_path.iterdir())

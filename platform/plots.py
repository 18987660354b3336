"""Pictures of an ablation sweep a researcher reads before the tables: Table 4's rows as bars with
95% intervals (one panel per metric), a category x row heat-map, and the training curves of every
child run of a row. Each function takes plain data (values in [0, 1], drawn in percent like Peng et
al. 2024) and a path, writes one PNG, and returns its panel titles. A missing value (None or NaN)
is drawn as a blank, never as zero. Drawn with matplotlib's Agg canvas directly: no pyplot, no
display, no global state. Not here: computing the numbers (platform/stats.py), MLflow.
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

BAR = "#4C72B0"
REFERENCE_BAR = "#DD8452"     # the full model (row 7)


def label(metric: str) -> str:
    """`image_AUROC` -> `image AUROC`."""
    return metric.replace("_", " ")


# ---------------------------------------------------------------- (a) Table 4 as bars

def paper_marks() -> dict:
    """{"image_AUROC": {"row N": percent}}: Table 4's published image AUROC, for `paper=`. Its "AP"
    column is left out: the paper does not say which AP it is (image or pixel)."""
    from search_spaces.ablation import PAPER_ROWS

    return {"image_AUROC": {f"row {row}": auroc for row, (variant, (auroc, _)) in PAPER_ROWS.items()
                            if variant is not None}}


def plot_ablation_bars(rows: Mapping, path, paper: Mapping | None = None, reference: str | None = "row 7",
                       groups: Sequence | None = None,
                       title: str = "Ablation (Table 4 rows): mean over categories, 95% interval") -> list[str]:
    """rows: {metric: {group: (mean, low, high)}} in [0, 1] (stats.row_means per metric), panels in
    the mapping's order; groups: bar order (default first-seen); paper: optional {metric: {group:
    percent}} drawn as black ticks (the paper's own numbers). Returns the panel titles."""
    metrics = list(rows)
    groups = list(groups) if groups is not None else _union(rows[m] for m in metrics)
    _require(metrics and groups, "plot_ablation_bars: no metric or no row to draw")
    wide = len(groups) > 8  # the factorial grid's 12 variants: one panel a line
    fig = _figure(len(metrics), ncols=1 if wide else 2, panel=(max(4.5, 0.75 * len(groups) + 1.5), 3.6))
    axes = fig.axes
    for ax, metric in zip(axes, metrics):
        _bars(ax, metric, rows[metric], groups, (paper or {}).get(metric), reference)
    handles = [Patch(color=BAR, label="row"), Line2D([], [], color="black", marker="|", markersize=10, lw=0,
                                                     label="95% interval")]
    if reference in groups:
        handles.insert(1, Patch(color=REFERENCE_BAR, label=f"{reference} (full model)"))
    if paper:
        handles.append(Line2D([], [], color="black", marker="_", markersize=14, mew=2, lw=0,
                              label="paper (Peng et al. 2024)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _bars(ax, metric: str, cells: Mapping, groups: list, paper: Mapping | None, reference: str | None) -> None:
    mean, low, high = (100 * np.array([_triple(cells.get(g))[k] for g in groups], dtype=float) for k in range(3))
    finite = np.concatenate([low[np.isfinite(low)], mean[np.isfinite(mean)]])
    top_data = np.concatenate([high[np.isfinite(high)], mean[np.isfinite(mean)]])
    marks = np.array([_finite((paper or {}).get(g)) for g in groups], dtype=float)
    marks = marks[np.isfinite(marks)]
    # AUROC and AP of these models sit near 100%: bars from 0 would hide differences of tenths of a
    # point, so the axis starts just below the lowest interval (the ticks say where).
    bottom = math.floor(min(np.concatenate([finite, marks]), default=0) - 0.5) if finite.size or marks.size else 0
    top = max(np.concatenate([top_data, marks]), default=100)
    top = min(100.0, top) + 0.25 * max(1.0, top - bottom)
    x = np.arange(len(groups))
    colours = [REFERENCE_BAR if g == reference else BAR for g in groups]
    ax.bar(x, mean - bottom, bottom=bottom, color=colours, width=0.65, zorder=2)
    ok = np.isfinite(mean) & np.isfinite(low) & np.isfinite(high)
    ax.errorbar(x[ok], mean[ok], yerr=[mean[ok] - low[ok], high[ok] - mean[ok]], fmt="none", ecolor="black",
                elinewidth=1.2, capsize=4, zorder=3)
    for xi, m, h in zip(x, mean, high):
        if math.isfinite(m):
            ax.annotate(f"{m:.2f}", (xi, h if math.isfinite(h) else m), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7.5)
        else:
            ax.annotate("n/a", (xi, bottom), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7.5, color="grey")
    if paper:
        px = [xi for xi, g in zip(x, groups) if paper.get(g) is not None]
        ax.scatter(px, [paper[groups[xi]] for xi in px], marker="_", s=400, linewidths=2, color="black",
                   zorder=4)
    ax.set_ylim(bottom, top)
    ax.set_xticks(x, groups, rotation=30 if max(map(len, groups), default=0) > 8 else 0,
                  ha="right" if max(map(len, groups), default=0) > 8 else "center", fontsize=8)
    ax.set_ylabel(f"{label(metric)} (%)")
    ax.set_xlabel("ablation row")
    ax.set_title(label(metric))
    ax.grid(axis="y", alpha=0.3, zorder=0)


# ---------------------------------------------------------------- (b) category x row heat-map

def plot_category_heatmap(cells: Mapping, path, metric: str = "image_AUROC", categories: Sequence | None = None,
                          groups: Sequence | None = None) -> list[str]:
    """cells: {(category, group): value in [0, 1]} (seed means: stats.cell_means); missing and NaN
    cells stay blank. Rows = categories (sorted unless given), columns = groups (first-seen order
    unless given). Returns the panel title."""
    categories = list(categories) if categories is not None else sorted({c for c, _ in cells})
    groups = list(groups) if groups is not None else _union([[g for _, g in cells]])
    _require(categories and groups, "plot_category_heatmap: no cell to draw")
    fig = Figure(figsize=(max(5.0, 0.9 * len(groups) + 2.5), max(3.0, 0.38 * len(categories) + 1.8)),
                 layout="constrained")
    ax = fig.add_subplot()
    _heatmap(ax, cells, metric, categories, groups)
    return _save(fig, path)


def _heatmap(ax, cells: Mapping, metric: str, categories: list, groups: list) -> None:
    grid = np.array([[_finite(cells.get((c, g))) for g in groups] for c in categories], dtype=float) * 100
    masked = np.ma.masked_invalid(grid)
    cmap = colormaps["viridis"].with_extremes(bad="white")
    lo, hi = (masked.min(), masked.max()) if masked.count() else (0, 100)
    image = ax.imshow(masked, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
    blank = np.ma.getmaskarray(masked)
    for i in range(len(categories)):
        for j in range(len(groups)):
            if not blank[i, j]:
                shade = (grid[i, j] - lo) / ((hi - lo) or 1)
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7.5,
                        color="black" if shade > 0.55 else "white")
    ax.set_xticks(range(len(groups)), groups, rotation=30 if max(map(len, groups), default=0) > 8 else 0,
                  ha="right" if max(map(len, groups), default=0) > 8 else "center", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.set_xlabel("ablation row")
    ax.set_ylabel("category")
    ax.set_title(f"{label(metric)} (%) per category and row (blank: no value)")
    ax.figure.colorbar(image, ax=ax, label=f"{label(metric)} (%)", shrink=0.9)


# ---------------------------------------------------------------- (c) training curves

def plot_training_curves(curves: Mapping, path, metric: str, percent: bool = False, xlabel: str = "step",
                         max_legend: int = 12) -> list[str]:
    """curves: {group: [(run name, steps, values), ...]} for one metric; one panel per group, the
    children overlaid on a shared y axis (NaN values break the line). percent: values in [0, 1]
    drawn as %. Legends only up to `max_legend` runs a panel. Returns the panel titles."""
    groups = list(curves)
    _require(groups, "plot_training_curves: no row to draw")
    fig = _figure(len(groups), ncols=min(3, max(1, len(groups))), panel=(4.6, 3.3), sharey=True)
    scale = 100 if percent else 1
    for ax, group in zip(fig.axes, groups):
        runs = curves[group]
        for name, steps, values in runs:
            ax.plot(np.asarray(steps, dtype=float), scale * np.asarray(values, dtype=float), lw=1.1,
                    alpha=0.85, label=name)
        ax.set_title(group)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label(metric)}{' (%)' if percent else ''}")
        ax.grid(alpha=0.3)
        if 0 < len(runs) <= max_legend:
            ax.legend(fontsize=6, loc="best")
        elif runs:
            ax.text(0.98, 0.97, f"{len(runs)} runs", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    fig.suptitle(f"{label(metric)} during training: every child run, per row", fontsize=12)
    return _save(fig, path)


# ---------------------------------------------------------------- helpers

def _figure(n_panels: int, ncols: int, panel: tuple, sharey: bool = False) -> Figure:
    """A figure with exactly n_panels axes on a grid of ncols columns."""
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), layout="constrained")
    first = None
    for k in range(n_panels):
        ax = fig.add_subplot(nrows, ncols, k + 1, sharey=first if sharey else None)
        first = first or ax
    return fig


def _save(fig: Figure, path) -> list[str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=130)
    return [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _require(condition, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _union(sequences) -> list:
    """Keys in first-seen order."""
    seen: dict = {}
    for seq in sequences:
        for key in seq:
            seen.setdefault(key, None)
    return list(seen)


def _finite(value) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def _triple(cell) -> tuple:
    return tuple(_finite(v) for v in cell) if cell is not None else (math.nan,) * 3

"""Paired comparisons of ablation rows: is a row's difference from another row more than noise?

Input, for one metric: a mapping {(group, category, seed): value} with values in [0, 1] (image
AUROC, pixel AP, ...); a value that is None or NaN is a missing cell. Each row (group) is compared
with the reference (the full model, Table 4's row 7 of Peng et al. 2024) and with its one-switch
neighbours: rows whose variant differs in exactly one of source, df, lk, df_update. A comparison
pairs the two rows on the (category, seed) cells both have and reports n, the mean difference,
a seeded paired-bootstrap 95% percentile interval and a Wilcoxon signed-rank p-value. Pure
functions on plain data; not here: reading MLflow, writing tables, plots.

Caveat worth keeping in mind when reading the numbers: with several seeds the (category, seed)
pairs of one category are not independent (the category dominates the variance). `unit="category"`
averages seeds within each category first, so n is the number of categories; that is the more
conservative reading of a sweep with many seeds.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

SWITCHES = ("source", "df", "lk", "df_update")
REFERENCE_ROW = 7            # Table 4's full model: MVTec source, deep features, large kernel, copy
ALPHA = 0.05
# Wilcoxon's smallest two-sided exact p with n non-zero differences is 2 / 2**n: below 6 pairs it is
# at least 0.0625, so the test cannot reject at 0.05 whatever the data; we report NaN, not a p that
# reads like evidence of no effect.
MIN_WILCOXON_PAIRS = 6


@dataclass(frozen=True)
class Comparison:
    """`row` minus `vs` on one metric, over the cells both rows have."""
    row: str
    vs: str
    metric: str
    kind: str                # "reference" | "neighbour" (a one-switch neighbour)
    differs: tuple           # switches that differ, in SWITCHES order
    n: int                   # pairs (or categories with unit="category")
    mean_diff: float         # in [0, 1] units, like the values; NaN when n == 0
    ci_low: float            # paired-bootstrap percentile interval of the mean difference
    ci_high: float
    p: float                 # Wilcoxon signed-rank, two-sided; NaN when it cannot be computed
    significant: bool        # p < ALPHA and the interval excludes 0
    note: str = ""           # why p or the interval is NaN


# ---------------------------------------------------------------- rows and their neighbours

def paper_row_variants() -> dict:
    """{"row 2": Variant, ..., "row 8": Variant}: Table 4's runnable rows (row 1 is a citation)."""
    from search_spaces.ablation import PAPER_ROWS

    return {f"row {row}": variant for row, (variant, _) in PAPER_ROWS.items() if variant is not None}


def differing_switches(a, b) -> tuple:
    """The switches in which two variants differ. df_update only counts when both variants have
    deep features: turning df off also drops F (df_update "-"), and that is one switch, not two."""
    differs = []
    if a.source != b.source:
        differs.append("source")
    if a.df != b.df:
        differs.append("df")
    if a.lk != b.lk:
        differs.append("lk")
    if a.df and b.df and a.df_update != b.df_update:
        differs.append("df_update")
    return tuple(differs)


def neighbours(variants: Mapping) -> dict:
    """{group: [(other group, switch), ...]} for every pair of groups one switch apart."""
    return {g: [(h, differing_switches(v, w)[0]) for h, w in variants.items()
                if h != g and len(differing_switches(v, w)) == 1]
            for g, v in variants.items()}


def reference_group(variants: Mapping) -> str | None:
    """The group holding Table 4's full model (row 7's variant), by variant, not by name, so that
    factorial groups (named by slug) find it too."""
    from search_spaces.ablation import PAPER_ROWS

    full = PAPER_ROWS[REFERENCE_ROW][0]
    return next((g for g, v in variants.items() if v == full), None)


# ---------------------------------------------------------------- one comparison

def paired_differences(values: Mapping, row: str, vs: str, unit: str = "pair") -> tuple[list, np.ndarray]:
    """Keys and differences row - vs over the cells both rows have (finite values only).
    unit="pair": keys are (category, seed); unit="category": seed means of the shared pairs."""
    if unit not in ("pair", "category"):
        raise ValueError(f"unit={unit!r}: expected 'pair' or 'category'")
    a = _cells(values, row)
    b = _cells(values, vs)
    keys = sorted(set(a) & set(b), key=str)
    if unit == "pair":
        return keys, np.array([a[k] - b[k] for k in keys], dtype=float)
    by_category: dict = {}
    for category, seed in keys:
        by_category.setdefault(category, []).append(a[category, seed] - b[category, seed])
    categories = sorted(by_category, key=str)
    return categories, np.array([np.mean(by_category[c]) for c in categories], dtype=float)


def bootstrap_ci(diffs, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` under resampling with replacement.
    One (n_resamples, n) index draw; row b is resample b, so a loop drawing n indices per
    resample from the same generator gives the same numbers."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_resamples, diffs.size))
    means = diffs[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(diffs) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p (zero differences dropped, scipy's default), and a note
    saying why it is NaN when it is."""
    from scipy.stats import wilcoxon

    diffs = np.asarray(diffs, dtype=float)
    nonzero = int(np.count_nonzero(diffs))
    if diffs.size == 0:
        return math.nan, "no shared pairs"
    if nonzero == 0:
        return math.nan, "all differences are zero"
    if nonzero < MIN_WILCOXON_PAIRS:
        return math.nan, (f"{nonzero} non-zero differences: Wilcoxon needs {MIN_WILCOXON_PAIRS} "
                          f"to be able to reach p < {ALPHA}")
    return float(wilcoxon(diffs).pvalue), ""


def compare(values: Mapping, row: str, vs: str, metric: str, kind: str = "reference", differs=(),
            unit: str = "pair", n_resamples: int = 10_000, seed: int = 0) -> Comparison:
    """`row` against `vs` on one metric's values."""
    _, diffs = paired_differences(values, row, vs, unit)
    low, high = bootstrap_ci(diffs, n_resamples, seed)
    p, note = wilcoxon_p(diffs)
    significant = bool(p < ALPHA and (low > 0 or high < 0))  # NaN compares False
    return Comparison(row=row, vs=vs, metric=metric, kind=kind, differs=tuple(differs), n=int(diffs.size),
                      mean_diff=float(diffs.mean()) if diffs.size else math.nan, ci_low=low, ci_high=high,
                      p=p, significant=significant, note=note)


# ---------------------------------------------------------------- all comparisons of a sweep

def compare_rows(values: Mapping, metric: str, variants: Mapping | None = None, reference: str | None = None,
                 unit: str = "pair", n_resamples: int = 10_000, seed: int = 0) -> list[Comparison]:
    """Every row against the reference, then every pair of one-switch neighbours, each pair once.

    variants: {group: Variant}; default Table 4's rows ("row 2".."row 8"). Groups in `values`
    without a variant are ignored; groups with a variant but no values give n = 0 comparisons.
    reference: default the group holding row 7's variant. A pair with the reference reads
    "row vs reference"; other pairs read in the order of `variants` (earlier vs later)."""
    variants = dict(variants) if variants is not None else paper_row_variants()
    reference = reference if reference is not None else reference_group(variants)
    present = {key[0] for key in values}
    groups = [g for g in variants if g in present]
    order = {g: i for i, g in enumerate(variants)}
    pairs: dict = {}
    if reference in present:
        for g in groups:
            if g != reference:
                pairs[frozenset((g, reference))] = (g, reference, "reference")
    for g, near in neighbours({g: variants[g] for g in groups}).items():
        for h, _ in near:
            key = frozenset((g, h))
            if key in pairs:
                continue
            if reference in key:
                row, vs = (h, g) if g == reference else (g, h)
            else:
                row, vs = sorted((g, h), key=order.get)
            pairs[key] = (row, vs, "neighbour")
    out = []
    for row, vs, kind in pairs.values():
        differs = differing_switches(variants[row], variants[vs])
        out.append(compare(values, row, vs, metric, kind, differs, unit, n_resamples, seed))
    return sorted(out, key=lambda c: (c.vs != reference, order[c.row], order[c.vs]))


def holm(ps) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN ones are not in the family and
    stay NaN). A sweep's comparisons are one family: with 10 (Table 4) or 31 (factorial) tests at
    0.05, an unadjusted 'significant' or two is expected by chance alone."""
    ps = [float(p) for p in ps]
    finite = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        out[i] = running
    return out


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    """Display table (strings, differences in percentage points) for a `comparisons` table;
    the index is the row, like the other result tables. `Holm p` adjusts over the comparisons
    given (one metric's family); `significant` is the unadjusted rule of `Comparison`."""
    adjusted = holm(c.p for c in comparisons)
    lines = [{
        "row": c.row, "vs": c.vs, "differs in": ", ".join(c.differs) or "–", "metric": c.metric,
        "n pairs": c.n, "mean diff (pp)": _pp(c.mean_diff),
        "95% CI": f"[{_pp(c.ci_low)}, {_pp(c.ci_high)}]" if c.n else "–",
        "Wilcoxon p": _p(c.p), "Holm p": _p(holm_p),
        "significant": "✓" if c.significant else "", "note": c.note} for c, holm_p in zip(comparisons, adjusted)]
    columns = ["row", "vs", "differs in", "metric", "n pairs", "mean diff (pp)", "95% CI", "Wilcoxon p",
               "Holm p", "significant", "note"]
    return pd.DataFrame(lines, columns=columns).set_index("row")


def values_from_trials(trials, metric: str) -> dict:
    """{(group, category, seed): value} from finished trials (objects with .group, .category, .seed,
    .status and a .values dict); values that are not numbers ("unavailable") are left out."""
    out = {}
    for t in trials:
        value = t.values.get(metric)
        if t.status == "FINISHED" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[t.group, t.category, t.seed] = float(value)
    return out


# ---------------------------------------------------------------- row means for plots

def row_means(values: Mapping, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """{group: (mean, low, high)}: the mean over categories of each category's seed mean (the
    number in the tables' mean row) and a percentile interval from resampling categories."""
    out = {}
    for group in dict.fromkeys(key[0] for key in values):  # first-seen order: the sweep's plan order
        per_category: dict = {}
        for (category, _), value in _cells(values, group).items():
            per_category.setdefault(category, []).append(value)
        means = np.array([np.mean(v) for v in per_category.values()], dtype=float)
        if means.size == 0:
            out[group] = (math.nan, math.nan, math.nan)
            continue
        out[group] = (float(means.mean()), *bootstrap_ci(means, n_resamples, seed, level))
    return out


def cell_means(values: Mapping) -> dict:
    """{(category, group): seed mean}: the cells of the per-category tables (and the heat-map)."""
    seeds: dict = {}
    for (group, category, _), value in values.items():
        if value is not None and math.isfinite(float(value)):
            seeds.setdefault((category, group), []).append(float(value))
    return {key: float(np.mean(v)) for key, v in seeds.items()}


def _cells(values: Mapping, group: str) -> dict:
    """{(category, seed): value} of one group, finite values only."""
    return {(c, s): float(v) for (g, c, s), v in values.items()
            if g == group and v is not None and math.isfinite(float(v))}


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


def _pp(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:+.2f}"

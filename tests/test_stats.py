"""Paired comparisons of ablation rows: neighbours from the row mapping, the bootstrap against a
pure-Python loop with the same seed, the Wilcoxon p against scipy, and the edge cases."""

import math
import random

import numpy as np
import pytest
import scipy.stats

from platform import stats
from search_spaces.ablation import PAPER_ROWS, factorial_variants

CATEGORIES = ["weave", "bolt", "tile", "gear", "cable", "nut", "mesh"]


def table(offsets: dict, seeds=(0, 1), noise=0.01, seed=0) -> dict:
    """{(group, category, seed): value} with a per-group offset and per-cell noise."""
    rng = random.Random(seed)
    return {(g, c, s): min(1.0, 0.9 + off + noise * rng.gauss(0, 1))
            for g, off in offsets.items() for c in CATEGORIES for s in seeds}


def brute_force_ci(diffs: list, n_resamples: int, seed: int, level: float = 0.95) -> tuple:
    """Resample with loops, scalar draws from the same generator, and numpy's default ('linear')
    percentile written out."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    means = []
    for _ in range(n_resamples):
        total = 0.0
        for _ in range(n):
            total += diffs[int(rng.integers(0, n))]
        means.append(total / n)
    means.sort()

    def percentile(q):
        pos = q / 100 * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    tail = 100 * (1 - level) / 2
    return percentile(tail), percentile(100 - tail)


def test_neighbours_of_the_full_model_follow_the_row_mapping():
    variants = stats.paper_row_variants()
    assert sorted(variants) == [f"row {r}" for r in range(2, 9)]
    assert stats.reference_group(variants) == "row 7"
    assert dict(stats.neighbours(variants)["row 7"]) == {"row 3": "source", "row 5": "lk", "row 6": "df",
                                                         "row 8": "df_update"}
    # turning df off drops F: rows 6 and 8 are one switch apart although df_update reads "-" vs "grad"
    assert stats.differing_switches(PAPER_ROWS[6][0], PAPER_ROWS[8][0]) == ("df",)
    assert stats.differing_switches(PAPER_ROWS[2][0], PAPER_ROWS[7][0]) == ("source", "df", "lk")


def test_neighbours_in_the_factorial_grid_named_by_slug():
    variants = {v.slug(): v for v in factorial_variants()}
    near = stats.neighbours(variants)
    assert stats.reference_group(variants) == "df_copy-lk-src_mvtec"
    assert dict(near["df_copy-lk-src_mvtec"]) == {"df_grad-lk-src_mvtec": "df_update", "lk-src_mvtec": "df",
                                                  "df_copy-src_mvtec": "lk", "df_copy-lk-src_dtd": "source"}
    for g, others in near.items():  # symmetric
        for h, switch in others:
            assert (g, switch) in near[h]
    values = table({g: 0.01 * i for i, g in enumerate(variants)})
    comparisons = stats.compare_rows(values, "image_AUROC", variants)
    assert sum(c.vs == "df_copy-lk-src_mvtec" for c in comparisons) == len(variants) - 1
    n_pairs = sum(len(v) for v in near.values()) // 2
    with_ref = len(near["df_copy-lk-src_mvtec"])
    assert len(comparisons) == len(variants) - 1 + n_pairs - with_ref


def test_bootstrap_matches_a_brute_force_loop_with_the_same_seed():
    diffs = [0.012, -0.004, 0.02, 0.0, 0.007, 0.015, -0.001, 0.009]
    for seed in (0, 7):
        fast = stats.bootstrap_ci(diffs, n_resamples=2000, seed=seed)
        slow = brute_force_ci(diffs, n_resamples=2000, seed=seed)
        assert fast == pytest.approx(slow, abs=1e-12)
    assert stats.bootstrap_ci(diffs, 2000, seed=0) != stats.bootstrap_ci(diffs, 2000, seed=1)


def test_comparison_against_scipy_and_brute_force_on_a_fixed_table():
    values = table({"row 7": 0.02, "row 5": 0.0})
    values["row 5", "bolt", 1] = math.nan        # a missing cell: that pair is left out
    del values["row 7", "tile", 0]               # a cell only one row has
    c = stats.compare(values, "row 5", "row 7", "image_AUROC", n_resamples=3000, seed=3)
    shared = [(cat, s) for cat in CATEGORIES for s in (0, 1) if (cat, s) not in {("bolt", 1), ("tile", 0)}]
    diffs = [values["row 5", cat, s] - values["row 7", cat, s] for cat, s in sorted(shared)]
    assert c.n == len(shared) == 12
    assert c.mean_diff == pytest.approx(sum(diffs) / len(diffs))
    assert c.p == pytest.approx(scipy.stats.wilcoxon(diffs).pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx(brute_force_ci(diffs, 3000, seed=3), abs=1e-12)
    assert c.ci_high < 0 and c.p < 0.05 and c.significant


def test_significant_needs_both_p_and_interval():
    values = table({f"row {r}": 0.004 * r for r in range(2, 9)}, noise=0.02, seed=5)
    comparisons = stats.compare_rows(values, "pixel_AP", n_resamples=2000)
    assert any(c.significant for c in comparisons) and not all(c.significant for c in comparisons)
    for c in comparisons:
        assert c.significant == (c.p < 0.05 and (c.ci_low > 0 or c.ci_high < 0))
        assert c.ci_low <= c.mean_diff <= c.ci_high


def test_compare_rows_pairs_each_once_reference_first():
    values = table({f"row {r}": 0.0 for r in range(2, 9)})
    comparisons = stats.compare_rows(values, "image_AUROC", n_resamples=200)
    pairs = [(c.row, c.vs) for c in comparisons]
    assert pairs[:6] == [(f"row {r}", "row 7") for r in (2, 3, 4, 5, 6, 8)]
    assert sorted(pairs[6:]) == [("row 2", "row 4"), ("row 4", "row 5"), ("row 4", "row 6"), ("row 6", "row 8")]
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    assert {c.kind for c in comparisons[:6]} == {"reference"} and {c.kind for c in comparisons[6:]} == {"neighbour"}


def test_all_zero_differences_give_nan_p_not_significant():
    values = table({"row 7": 0.0})
    values.update({("row 8", c, s): v for (_, c, s), v in values.items()})
    c = stats.compare(values, "row 8", "row 7", "image_AUROC", n_resamples=500)
    assert c.n == 14 and c.mean_diff == 0 and (c.ci_low, c.ci_high) == (0, 0)
    assert math.isnan(c.p) and "zero" in c.note and not c.significant


def test_too_few_pairs_give_nan_p_and_say_so():
    values = {("row 7", c, 0): 0.9 for c in CATEGORIES[:5]}
    values.update({("row 5", c, 0): 0.8 for c in CATEGORIES[:5]})
    c = stats.compare(values, "row 5", "row 7", "image_AUROC", n_resamples=500)
    assert c.n == 5 and c.mean_diff == pytest.approx(-0.1)
    assert math.isnan(c.p) and "5 non-zero" in c.note and not c.significant
    # one more pair and the test can reject: scipy's exact p is 2 / 2**6
    values.update({("row 7", "nut", 0): 0.9, ("row 5", "nut", 0): 0.8})
    c = stats.compare(values, "row 5", "row 7", "image_AUROC", n_resamples=500)
    assert c.p == pytest.approx(1 / 32) and c.significant


def test_no_shared_pairs_and_missing_groups():
    values = {("row 7", "weave", 0): 0.9, ("row 5", "bolt", 0): 0.8}
    c = stats.compare(values, "row 5", "row 7", "image_AUROC")
    assert c.n == 0 and math.isnan(c.mean_diff) and math.isnan(c.ci_low) and math.isnan(c.p)
    assert c.note == "no shared pairs" and not c.significant
    # without the reference group: only neighbour pairs among the groups present
    values = table({"row 4": 0.0, "row 5": 0.01, "row 2": 0.0})
    pairs = [(c.row, c.vs) for c in stats.compare_rows(values, "image_AUROC", n_resamples=200)]
    assert pairs == [("row 2", "row 4"), ("row 4", "row 5")]


def test_unit_category_averages_seeds_first():
    values = table({"row 7": 0.01, "row 3": 0.0}, seeds=(0, 1, 2))
    keys, diffs = stats.paired_differences(values, "row 3", "row 7", unit="category")
    assert keys == sorted(CATEGORIES)
    expected = [np.mean([values["row 3", c, s] - values["row 7", c, s] for s in (0, 1, 2)]) for c in keys]
    assert diffs == pytest.approx(expected)
    c = stats.compare(values, "row 3", "row 7", "image_AUROC", unit="category", n_resamples=200)
    assert c.n == len(CATEGORIES)
    with pytest.raises(ValueError, match="unit"):
        stats.paired_differences(values, "row 3", "row 7", unit="seed")


def test_comparisons_frame_reads_in_percentage_points():
    values = table({"row 7": 0.0, "row 5": -0.01, "row 3": 0.0}, noise=0.0)
    frame = stats.comparisons_frame(stats.compare_rows(values, "image_AUROC", n_resamples=200))
    assert list(frame.columns) == ["vs", "differs in", "metric", "n pairs", "mean diff (pp)", "95% CI",
                                   "Wilcoxon p", "Holm p", "significant", "note"]
    assert frame.index.name == "row"
    r5 = frame.loc["row 5"]
    assert (r5["vs"], r5["differs in"], r5["n pairs"], r5["mean diff (pp)"], r5["95% CI"]) == \
        ("row 7", "lk", 14, "-1.00", "[-1.00, -1.00]")
    assert r5["Wilcoxon p"] != "–" and r5["significant"] == "✓"
    r3 = frame.loc["row 3"]
    assert (r3["Wilcoxon p"], r3["significant"], r3["mean diff (pp)"]) == ("–", "", "+0.00")


def test_row_means_are_the_table_mean_row_with_a_category_interval():
    values = table({"row 7": 0.02, "row 2": 0.0})
    values["row 2", "bolt", 0] = math.nan
    means = stats.row_means(values, n_resamples=500)
    expected = np.mean([np.mean([values["row 2", c, s] for s in (0, 1) if not (c == "bolt" and s == 0)])
                        for c in CATEGORIES])
    mean, low, high = means["row 2"]
    assert mean == pytest.approx(expected) and low < mean < high


def test_values_from_trials_skips_unfinished_and_unavailable():
    from types import SimpleNamespace as T
    trials = [T(group="row 7", category="weave", seed=0, status="FINISHED", values={"image_AUROC": 0.9}),
              T(group="row 7", category="bolt", seed=0, status="FAILED", values={"image_AUROC": 0.8}),
              T(group="row 5", category="weave", seed=0, status="FINISHED", values={"image_AUROC": "unavailable"})]
    assert stats.values_from_trials(trials, "image_AUROC") == {("row 7", "weave", 0): 0.9}


def test_holm_adjustment_by_hand():
    # m = 4 finite: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, max(0.04, 0.06), max(0.06, 0.06), max(0.06, 0.5)
    adjusted = stats.holm([0.03, math.nan, 0.01, 0.5, 0.02])
    assert adjusted[1] != adjusted[1]  # NaN stays out of the family
    assert [adjusted[k] for k in (2, 4, 0, 3)] == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1

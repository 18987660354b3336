"""Every search space instantiates, expands to the documented trials, and rejects bad input."""

import pytest

import search_spaces
from search_spaces import hpo
from search_spaces.ablation import PAPER_ROWS, Variant
from trainables.data import EMBEDDED_CATEGORIES
from trainables.errors import UserInputError


def test_paper_rows_follow_the_spec_mapping():
    # docs/detector.md §2.2: (source, deep features, large kernel, F training) per Table 4 row
    expected = {2: ("dtd", False, False, "-"), 3: ("dtd", True, True, "copy"), 4: ("mvtec", False, False, "-"),
                5: ("mvtec", True, False, "copy"), 6: ("mvtec", False, True, "-"),
                7: ("mvtec", True, True, "copy"), 8: ("mvtec", True, True, "grad")}
    got = {row: (v.source, v.df, v.lk, v.df_update) for row, (v, _) in PAPER_ROWS.items() if v is not None}
    assert got == expected
    assert PAPER_ROWS[1] == (None, (98.00, 68.40))  # DRAEM's published numbers: a reference only


def test_ablation_paper_rows_all_categories_and_seeds():
    plan = search_spaces.build("ablation", preset="paper", seeds=3)
    assert plan.n_runs == len(EMBEDDED_CATEGORIES) * 7 * 3 == 315
    names = [t.name for t in plan.trials]
    assert len(set(names)) == len(names)
    assert {t.group for t in plan.trials} == {f"row {r}" for r in range(2, 9)}
    full = next(t for t in plan.trials if t.name == "weave-df_copy-lk-src_mvtec-s2")
    assert full.group == "row 7" and full.seed == 2
    assert full.overrides == {"anomaly_source": "mvtec", "df": True, "lk": True, "df_update": "copy",
                              "category": "weave", "seed": 2}
    assert plan.dataset == "embedded" and any("not comparable" in n for n in plan.notes)


def test_ablation_factorial_has_only_meaningful_combinations():
    plan = search_spaces.build("ablation", grid="factorial", categories=["weave"], preset="tiny")
    variants = {t.group for t in plan.trials}
    assert len(variants) == 12  # (df off: lk x src = 4) + (df on: lk x src x copy|grad = 8)
    assert not any("df_grad" in v and "df_copy" in v for v in variants)
    off = [t for t in plan.trials if not t.overrides["df"]]
    assert all(t.config["df_update"] == "copy" and "df_" not in t.params["variant"] for t in off)
    rows = {t.params["paper_row"] for t in plan.trials}
    assert rows == {2, 3, 4, 5, 6, 7, 8, "-"}  # the 7 paper rows are in the factorial grid


def test_ablation_subsets_and_extra_fields():
    plan = search_spaces.build("ablation", categories=["bolt", "weave"], rows=[7, 2], seeds=2, preset="tiny",
                               extra={"epochs": 3})
    assert [t.name for t in plan.trials][:2] == ["bolt-src_procedural-s0", "bolt-src_procedural-s1"]
    assert plan.n_runs == 2 * 2 * 2 and all(t.overrides["epochs"] == 3 for t in plan.trials)


@pytest.mark.parametrize("options, message", [
    ({"categories": ["carpet"]}, "not in dataset 'embedded'"),          # an MVTec name on the embedded set
    ({"categories": ["weave", "weave"]}, "listed twice"),
    ({"grid": "diagonal"}, "--grid diagonal"),
    ({"rows": [1]}, "reference"),
    ({"rows": [9]}, "Table 4 has rows"),
    ({"grid": "factorial", "rows": [7]}, "only with --grid paper-rows"),
    ({"seeds": 0}, "--seeds 0"),
    ({"extra": {"df": False}}, "set by the sweep itself"),              # an axis
    ({"extra": {"category": "bolt"}}, "set by the sweep itself"),       # the run's identity
    ({"extra": {"learning_rate": 1}}, "unknown config key"),            # not a detector field
    ({"extra": {"epochs": "many"}}, "expected int"),
    ({"preset": "huge"}, "preset"),
    ({"data": "/nonexistent/mvtec"}, "no such directory"),
])
def test_ablation_rejects_bad_input(options, message):
    with pytest.raises(UserInputError, match=message):
        search_spaces.build("ablation", **{"preset": "tiny", **options})


def test_impossible_variant_is_rejected():
    with pytest.raises(UserInputError, match="impossible without deep features"):
        Variant("mvtec", df=False, lk=True, df_update="grad")
    with pytest.raises(UserInputError, match="expected one of"):
        Variant("imagenet", df=True, lk=True, df_update="copy")


def test_ablation_on_a_user_dataset(dataset):
    plan = search_spaces.build("ablation", data=str(dataset), rows=[2], preset="tiny")
    assert plan.dataset == "mvtec" and [t.category for t in plan.trials] == ["widget"]


def test_hpo_one_study_per_category():
    plan = search_spaces.build("hpo", categories=["weave", "bolt"], samples=5, preset="tiny")
    assert [p.name for p in plan.phases] == ["hpo-weave", "hpo-bolt"]
    assert plan.n_runs == 10
    search = plan.phases[0].search
    assert set(search.space) == {"lr", "w_l2", "w_ssim", "w_df"} and search.metric == "val_image_AUROC"
    assert search.asha_metric == "val_image_AUROC"  # every report carries it: selection never sees the test split
    assert all(t.cfg.val_fraction == hpo.VAL_FRACTION for t in plan.trials)
    assert search_spaces.build("hpo", categories=["weave"], samples=1, preset="tiny",
                               extra={"val_fraction": 0.3}).trials[0].cfg.val_fraction == 0.3
    no_df = search_spaces.build("hpo", categories=["weave"], row=6, samples=2, preset="tiny")
    assert "w_df" not in no_df.phases[0].search.space  # row 6 has no deep-feature term to weigh


@pytest.mark.parametrize("options, message", [
    ({"samples": 0}, "--samples 0"),
    ({"row": 1}, "template"),
    ({"space": {"lr": ("normal", 0, 1)}}, "expected"),
    ({"space": {"lr": ("loguniform", 0, 1)}}, "low > 0"),
    ({"space": {"momentum": ("uniform", 0.1, 0.9)}}, "unknown config key"),
    ({"extra": {"lr": 1e-3}}, "set by the sweep itself"),
    ({"extra": {"val_fraction": 0}}, "selects on the validation split"),
])
def test_hpo_rejects_bad_input(options, message):
    with pytest.raises(UserInputError, match=message):
        hpo.build(**{"categories": ["weave"], "preset": "tiny", **options})


def test_gan_and_classify_spaces():
    gan = search_spaces.build("gan", categories=["bolt"], preset="tiny")
    stage1, stage2 = gan.phases
    assert [t.name for t in stage1.trials] == ["bolt-stage1-s0"]
    defects = EMBEDDED_CATEGORIES["bolt"][1]
    assert len(stage2.trials) == len(defects) * 5
    assert {t.needs for t in stage2.trials} == {("bolt-stage1-s0",)}  # one stage 1 per category, reused
    assert {t.config["lambda_ms"] for t in stage2.trials} == {0.0, 0.05, 0.1, 0.2, 0.5}
    with pytest.raises(UserInputError, match="defect"):
        search_spaces.build("gan", categories=["bolt"], defects=["dent"], preset="tiny")
    with pytest.raises(UserInputError, match="lambda"):
        search_spaces.build("gan", categories=["bolt"], lambdas=[-1], preset="tiny")
    classify = search_spaces.build("classify", categories=["bolt", "weave"], preset="tiny")
    stage1, protocol = classify.phases
    assert [t.name for t in stage1.trials] == ["bolt-stage1-s0", "weave-stage1-s0"]
    assert sorted(t.name for t in protocol.trials) == sorted(
        f"{c}-partition{p}-s0" for c in ("bolt", "weave") for p in range(3))
    # the sweep's partition count reaches each trial's config, whatever the preset's default
    assert {t.cfg.partitions for t in protocol.trials} == {3}
    with pytest.raises(UserInputError, match="set by the sweep itself"):
        search_spaces.build("classify", categories=["bolt"], preset="tiny", extra={"partitions": 2})

"""Result tables rebuilt from a real SQLite MLflow store: layouts, means, ± std, versions."""

import itertools
import json
import statistics

import pytest

from platform import tables, tracking

_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its schema takes seconds); sweeps differ by id."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def make_sweep(uri: str, kind: str, children: list[dict], sweep_id: str | None = None,
               unstarted: list[dict] = ()) -> str:
    """A parent run with its plan (the children plus `unstarted` trials that never got a run) and
    FINISHED/FAILED child runs, logged the way the tracking callback does."""
    sweep_id = sweep_id or f"test-{kind}-{next(_ids)}"
    planned = [{"name": c["name"], "category": c["params"]["category"], "group": c["params"]["group"],
                "seed": c["params"]["seed"], "params": c["params"], "switches": c["params"]}
               for c in [*children, *unstarted]]
    parent = tracking.open_parent(uri, "tables-test", sweep_id, {"kind": kind},
                                  {"kind": kind, "dataset": "embedded"}, planned)
    client = tracking.client(uri)
    experiment = client.get_run(parent).info.experiment_id
    for child in children:
        run = client.create_run(experiment, run_name=child["name"], tags={
            tracking.PARENT_TAG: parent, tracking.TRIAL_NAME_TAG: child["name"], "sweep_role": "trial",
            **child.get("tags", {})})
        tracking._log_params(client, run.info.run_id, child["params"])
        for key, value in child["metrics"].items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status=child.get("status", "FINISHED"))
    return parent


def ablation_children():
    """2 categories x rows 2, 7 x 2 seeds; image_AUROC = 0.5 + row/100 + seed/1000 + (bolt: 0.1)."""
    children = []
    switches = {2: {"anomaly_source": "dtd", "df": False, "lk": False, "df_update": "copy",
                    "texture_source": "procedural (DTD absent)"},
                7: {"anomaly_source": "mvtec", "df": True, "lk": True, "df_update": "copy", "texture_source": "mvtec"}}
    for category in ("weave", "bolt"):
        for row in (2, 7):
            for seed in (0, 1):
                auroc = 0.5 + row / 100 + seed / 1000 + (0.1 if category == "bolt" else 0)
                children.append({"name": f"{category}-r{row}-s{seed}",
                                 "params": {"category": category, "group": f"row {row}", "seed": seed,
                                            "paper_row": row, **switches[row]},
                                 "metrics": {"image_AUROC": auroc, "pixel_AUROC": 0.9, "image_AP": 0.8,
                                             "pixel_AP": 0.3, "final": 1, "loss/total": 1.0 - auroc}})
    return children


def by_name(built):
    return {t.name: t for t in built}


def test_ablation_tables_layout_and_values(store, tmp_path):
    parent = make_sweep(store, "ablation", ablation_children())
    built = by_name(tables.build_and_log(store, parent, out_dir=tmp_path / "out"))
    expected = {"ablation_summary", "comparisons"} | {f"ablation_{m}{s}" for m in tables.DETECTOR_METRICS
                                                      for s in ("", "_pm")}
    assert set(built) == expected

    auroc = built["ablation_image_AUROC"].frame
    assert list(auroc.columns) == ["row 2", "row 7"] and list(auroc.index) == ["bolt", "weave", "mean"]
    weave_row7 = 100 * statistics.mean([0.57, 0.571])
    assert auroc.loc["weave", "row 7"] == f"{weave_row7:.2f}"
    mean_row7 = 100 * statistics.mean([0.57, 0.571, 0.67, 0.671])
    assert auroc.loc["mean", "row 7"] == f"{mean_row7:.2f} (4/4)"  # over 4 of the 4 planned (category, seed)
    # mean ± std over seeds; the mean row's std is over the per-seed means across categories
    pm = built["ablation_image_AUROC_pm"].frame
    assert pm.loc["weave", "row 2"] == f"{100 * 0.5205:.2f} ± {100 * statistics.stdev([0.52, 0.521]):.2f}"
    per_seed = [statistics.mean([0.57, 0.67]), statistics.mean([0.571, 0.671])]
    assert pm.loc["mean", "row 7"] == (f"{100 * statistics.mean(per_seed):.2f} ± {100 * statistics.stdev(per_seed):.2f}"
                                       f" (4/4)")

    summary = built["ablation_summary"].frame
    assert list(summary.columns[:4]) == ["df (deep features)", "lk (large kernel)", "anomaly_source",
                                         "df_update (F training)"]
    assert summary.index[0].startswith("1 (DRAEM") and summary.iloc[0]["paper AUROC"] == "98.00"
    row7 = summary.loc["7"]
    assert (row7["df (deep features)"], row7["lk (large kernel)"], row7["anomaly_source"],
            row7["df_update (F training)"]) == ("✓", "✓", "mvtec", "copy")
    # the dtd row without a DTD root says so: never a bare DTD
    row2 = summary.loc["2"]
    assert row2["anomaly_source"] == "procedural (DTD absent)" and row2["df_update (F training)"] == ""
    assert "procedural (DTD absent): no DTD root was given" in built["ablation_summary"].markdown()
    assert row7["paper AUROC"] == "99.70" and row7["paper AP"] == "99.87"
    assert row7["image AUROC"].startswith(f"{100 * statistics.mean(per_seed):.2f} ± ")
    assert "not comparable" in built["ablation_summary"].markdown()
    assert (tmp_path / "out" / "ablation_summary.md").read_text().startswith("### Ablation summary")
    assert (tmp_path / "out" / "ablation_image_AUROC.csv").read_text().splitlines()[0] == "category,row 2,row 7"

    # statistics: row 2 is 5 pp below row 7 on each of the 4 (category, seed) pairs; 4 pairs are too
    # few for a Wilcoxon test to reach 0.05, so the difference is marked not significant
    assert summary.loc["2", "Δ image AUROC vs row 7"] == "-5.00 n.s." and row7["Δ image AUROC vs row 7"] == "(reference)"
    comparisons = built["comparisons"].frame
    auroc_rows = comparisons[comparisons["metric"] == "image_AUROC"]
    assert list(auroc_rows["vs"]) == ["row 7"] and auroc_rows.iloc[0]["n pairs"] == 4
    assert auroc_rows.iloc[0]["mean diff (pp)"].startswith("-5.00") and auroc_rows.iloc[0]["significant"] == ""
    # the plots beside the tables and on the parent run
    drawn = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert drawn == ["ablation_bars.png", "curves_loss.png", "heatmap_image_AUROC.png"]
    client = tracking.client(store)
    logged = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(parent, "tables/v1/plots")}
    assert logged == set(drawn)


def test_tables_are_versioned_never_appended(store):
    parent = make_sweep(store, "ablation", ablation_children())
    tables.build_and_log(store, parent)
    tables.build_and_log(store, parent)
    client = tracking.client(store)
    assert {f.path for f in client.list_artifacts(parent, "tables") if f.is_dir} == {"tables/v1", "tables/v2"}
    import mlflow

    # MlflowClient.load_table searches through the global tracking URI, not the client's
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        mlflow.set_experiment(experiment_id=client.get_run(parent).info.experiment_id)
        frame = mlflow.load_table("tables/v2/ablation_image_AUROC.json", run_ids=[parent],
                                  extra_columns=["run_id"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(frame) == 3  # bolt, weave, mean: no rows appended by the second build
    for version in (1, 2):  # the JSON of every version holds its rows once
        local = client.download_artifacts(parent, f"tables/v{version}/ablation_image_AUROC.json")
        assert len(json.loads(open(local).read())["data"]) == 3
    assert client.download_artifacts(parent, "tables/LATEST")


def test_missing_and_unavailable_cells_are_marked(store):
    children = ablation_children()
    children[0]["status"] = "FAILED"              # weave row 2 seed 0
    del children[2]["metrics"]["pixel_AUROC"]     # weave row 7 seed 0: could not be computed
    children[2]["tags"] = {"pixel_AUROC": "unavailable", "pixel_AUROC_note": "weights absent: run this"}
    built = by_name(tables.build_and_log(store, make_sweep(store, "ablation", children)))
    pixel = built["ablation_pixel_AUROC"].frame
    assert pixel.loc["weave", "row 7"] == "unavailable" and pixel.loc["mean", "row 7"] == "unavailable"
    # the trainer's note says why, under the tables that show 'unavailable' only
    assert "unavailable (pixel_AUROC): weights absent: run this" in built["ablation_pixel_AUROC"].markdown()
    assert "weights absent" not in built["ablation_image_AUROC"].markdown()
    assert pixel.loc["bolt", "row 7"] == "90.00"
    auroc = built["ablation_image_AUROC"].frame
    assert auroc.loc["weave", "row 2"] == f"{100 * 0.521:.2f} (1/2)"  # seed 1 only
    assert auroc.loc["mean", "row 2"].endswith(" (3/4)")
    assert "1 of 8 planned trials did not finish" in built["ablation_summary"].markdown()


def test_tables_follow_the_plan_not_the_runs(store):
    """A planned trial that never got a run (it failed before its first report, or the sweep was
    stopped) is a missing cell, and the means say over how many planned pairs they are taken."""
    children = ablation_children()
    never = [c for c in children if c["name"] == "bolt-r7-s1"]
    children = [c for c in children if c["name"] != "bolt-r7-s1"]
    built = by_name(tables.build_and_log(store, make_sweep(store, "ablation", children, unstarted=never)))
    auroc = built["ablation_image_AUROC"].frame
    assert list(auroc.index) == ["bolt", "weave", "mean"]
    assert auroc.loc["bolt", "row 7"] == f"{100 * 0.67:.2f} (1/2)"
    assert auroc.loc["mean", "row 7"] == f"{100 * statistics.mean([0.67, statistics.mean([0.57, 0.571])]):.2f} (3/4)"
    pm = built["ablation_image_AUROC_pm"].frame
    # per-seed means are keyed by seed: seed 0 over both categories, seed 1 over weave only
    per_seed = [statistics.mean([0.57, 0.67]), 0.571]
    assert pm.loc["mean", "row 7"].startswith(f"{100 * statistics.mean(per_seed):.2f} ± ")
    assert "bolt-r7-s1" in built["ablation_summary"].markdown()

    children = [c for c in ablation_children() if not c["name"].startswith("bolt-r7")]
    unstarted = [c for c in ablation_children() if c["name"].startswith("bolt-r7")]
    built = by_name(tables.build_and_log(store, make_sweep(store, "ablation", children, unstarted=unstarted)))
    assert built["ablation_image_AUROC"].frame.loc["bolt", "row 7"] == "–"


def test_dfmgan_table_1_layout(store):
    children = []
    for defect in ("hole", "scratch"):
        for lam in (0.0, 0.1):
            children.append({"name": f"bolt-{defect}-l{lam}", "params": {
                "category": "bolt", "group": f"λ={lam}", "seed": 0, "stage": 2, "defect": defect, "lambda_ms": lam},
                "metrics": {"KID_x1e3": 10 + lam * 10, "clustered_LPIPS": 0.2 + lam}})
    children.append({"name": "bolt-stage1", "params": {"category": "bolt", "group": "stage 1", "seed": 0,
                                                        "stage": 1}, "metrics": {"kimg": 1}})
    built = by_name(tables.build_and_log(store, make_sweep(store, "gan", children)))
    frame = built["dfmgan_bolt"].frame
    assert list(frame.index) == ["DFMGAN λ=0.0", "DFMGAN λ=0.1"]
    assert list(frame.columns) == ["hole KID×10³ ↓", "hole cLPIPS ↑", "scratch KID×10³ ↓", "scratch cLPIPS ↑"]
    assert frame.loc["DFMGAN λ=0.1", "scratch KID×10³ ↓"] == "11.000"
    assert frame.loc["DFMGAN λ=0.1", "hole cLPIPS ↑"] == "0.300"


def test_classification_accuracy_per_partition(store):
    children = [{"name": f"bolt-p{p}", "params": {"category": "bolt", "group": f"P{p + 1}", "seed": 0, "partition": p},
                 "metrics": {"accuracy": acc}} for p, acc in enumerate((0.8, 0.7, 0.9))]
    built = by_name(tables.build_and_log(store, make_sweep(store, "classify", children)))
    frame = built["classification_accuracy"].frame
    assert list(frame.columns) == ["P1 Acc", "P2 Acc", "P3 Acc", "mean ± std"]
    assert list(frame.loc["bolt"]) == ["80.00", "70.00", "90.00", "80.00 ± 10.00"]
    assert "ImageNet" not in built["classification_accuracy"].markdown()   # every classifier had its weights

    children[1]["tags"] = {"classifier_init": "scratch", "classifier_init_note": "trained from scratch: fetch it"}
    table = by_name(tables.build_and_log(store, make_sweep(store, "classify", children)))["classification_accuracy"]
    assert "without ImageNet weights in 1 of 3 runs" in table.markdown() and "fetch it" in table.markdown()


def test_report_finds_a_sweep_by_id_only(store, capsys):
    from platform import sweep

    make_sweep(store, "ablation", ablation_children(), sweep_id="ablation-paper-rows-tiny-12345678")
    assert sweep.main(["report", "ablation-paper-rows-tiny-12345678", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "Ablation summary in the layout of Table 4" in out and "mlflow ui --backend-store-uri" in out


def test_hpo_table_chooses_by_the_validation_metric_and_reports_the_test_metric_beside_it(store):
    """Three weave trials: the best on the test split (t2) is not the best on validation (t1);
    the table must pick t1 and show t1's test number; t4, stopped early by ASHA at a higher
    validation metric, has no test metric and is not ranked either. A bolt trial from before
    the validation split (test metric only) is not ranked."""
    def child(name, category, lr, val, test, status="FINISHED"):
        metrics = {"image_AUROC": test, "pixel_AUROC": 0.9, "image_AP": 0.8, "pixel_AP": 0.3, "final": 1}
        if val is not None:
            metrics.update({"val_image_AUROC": val, "val_pixel_AUROC": 0.7})
        return {"name": name, "status": status, "metrics": metrics,
                "params": {"category": category, "group": "row 7", "seed": 0, "lr": lr, "w_l2": 1.0}}

    children = [child("weave-t0", "weave", 1e-4, 0.60, 0.70), child("weave-t1", "weave", 2e-4, 0.80, 0.65),
                child("weave-t2", "weave", 3e-4, 0.70, 0.95), child("weave-t3", "weave", 4e-4, 0.99, 0.99, "FAILED"),
                child("weave-t4", "weave", 5e-4, 0.95, None), child("bolt-t0", "bolt", 1e-4, None, 0.90)]
    del children[4]["metrics"]["final"], children[4]["metrics"]["image_AUROC"]  # stopped before its last report
    [table] = tables.build_and_log(store, make_sweep(store, "hpo", children))
    frame = table.frame
    assert frame.loc["weave", "run"] == "weave-t1" and frame.loc["weave", "lr"] == "0.0002"
    assert frame.loc["weave", "image_AUROC (val)"] == "80.00" and frame.loc["weave", "image_AUROC (test)"] == "65.00"
    assert frame.loc["weave", "pixel_AUROC (val)"] == "70.00" and frame.loc["weave", "trials"] == 4
    assert frame.loc["weave", "stopped early"] == 1 and frame.loc["weave", "tied at best"] == 1
    assert frame.loc["bolt", "run"] == "–" and frame.loc["bolt", "image_AUROC (test)"] == "–"
    text = table.markdown()
    assert "optimistic" not in text and "Chosen by val_image_AUROC" in text


def test_hpo_table_breaks_ties_on_validation_metrics_then_names(store):
    """Held-out sets are small, so trials often tie on val_image_AUROC (at 100%, say): the
    validation pixel AUROC decides, then the run name, whatever order MLflow lists the runs in;
    the test split never does."""
    def child(name, val_pixel, test):
        return {"name": name, "params": {"category": "weave", "group": "row 7", "seed": 0, "lr": 1e-4},
                "metrics": {"val_image_AUROC": 1.0, "val_pixel_AUROC": val_pixel, "image_AUROC": test, "final": 1}}

    children = [child("weave-t0", 0.80, 0.99), child("weave-t1", 0.90, 0.70), child("weave-t2", 0.90, 0.60)]
    for order in (children, children[::-1]):
        [table] = tables.build_and_log(store, make_sweep(store, "hpo", order))
        assert table.frame.loc["weave", "run"] == "weave-t1" and table.frame.loc["weave", "tied at best"] == 3
    assert "broken by val_pixel_AUROC, then by run name" in table.markdown()

"""What the MLflow UI gets from a sweep: a model-training experiment, a saved view of its runs
that puts the paper's metrics first, and links to them. (How MLflow 3.17.2's UI renders that view
was checked in headless Chromium: docs/platform.md.)"""

import json
from urllib.parse import parse_qsl, unquote, urlsplit

from platform import sweep, tracking, ui_view


def test_the_experiment_is_marked_model_training_when_created_and_when_reused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    created = tracking.experiment_id(uri, "new-sweeps")
    assert client.get_experiment(created).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    existing = client.create_experiment("older-sweeps", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    bare = client.create_experiment("bare-sweeps")
    assert tracking.experiment_id(uri, "older-sweeps") == existing
    assert tracking.experiment_id(uri, "bare-sweeps") == bare
    for reused in (existing, bare):
        assert client.get_experiment(reused).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_compare_url_is_mlflows_compare_runs_route_with_the_runs_and_experiment():
    ids = ["83032402e5334529b343633a087bda48", "c15bc7e7b8d9479691951c346075be44"]
    url = sweep.compare_url("http://127.0.0.1:5000", "7", ids)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:5000", "/")
    route, _, query = parts.fragment.partition("?")
    assert route == "/compare-runs"
    assert not set(query) & set('"[] ')  # percent-encoded: a terminal keeps the link whole
    # the page decodes the query and JSON-parses `runs` and `experiments`
    fields = dict(parse_qsl(unquote(query)))
    assert json.loads(fields["runs"]) == ids and json.loads(fields["experiments"]) == ["7"]
    assert fields["workflowType"] == "machine_learning"


def test_ui_hint_for_a_sqlite_store_gives_the_command_and_local_links():
    hint = sweep.open_ui_hint("sqlite:////tmp/x/mlflow.db", "3", ["a" * 32, "b" * 32])
    first, second = hint.splitlines()
    assert first.startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1 "
                            "--port 5000, then open http://127.0.0.1:5000/#/experiments/3/runs?workflowType="
                            "machine_learning")
    assert second == f"compare its 2 trials: {sweep.compare_url('http://127.0.0.1:5000', '3', ['a' * 32, 'b' * 32])}"
    server = sweep.open_ui_hint("http://mlflow.lab:8080/", "3", [])
    assert server.startswith("MLflow UI: http://mlflow.lab:8080/#/experiments/3/runs?") and "\n" not in server


def test_the_sweeps_view_opens_on_its_children_with_the_paper_metrics_first(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = tracking.experiment_id(uri, "sweeps")
    labels = ["seed", "anomaly_source", "category", "epochs", "paper_row", "lk", "df", "df_update"]
    key = ui_view.share(client, experiment, "ablation-paper-rows-small-0123abcd", "ablation", "p" * 32, labels)
    view = json.loads(client.get_experiment(experiment).tags[ui_view.SHARED_VIEW_TAG + key])
    assert view["searchFilter"] == f"tags.`mlflow.parentRunId` = '{'p' * 32}'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`image_AUROC`", False)
    assert view["selectedColumns"] == [
        "metrics.`image_AUROC`", "metrics.`pixel_AUROC`", "metrics.`pixel_AP`", "metrics.`image_AP`",
        "params.`category`", "params.`paper_row`", "params.`df`", "params.`lk`", "params.`anomaly_source`",
        "params.`df_update`", "params.`seed`", "params.`epochs`"]
    # the chart view: one section, first, with a bar per paper metric and the switches' parallel plot
    [section] = view["compareRunSections"]
    assert view["isAccordionReordered"] and section["isReordered"]
    charts = view["compareRunCharts"]
    assert all(chart["metricSectionId"] == section["uuid"] for chart in charts)
    assert [c["metricKey"] for c in charts if c["type"] == "BAR"] == list(ui_view.METRICS["ablation"])
    [parallel] = [c for c in charts if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["df", "lk", "anomaly_source", "df_update"]
    assert parallel["selectedMetrics"] == ["image_AUROC", "pixel_AUROC"]


def test_ui_hint_with_a_view_links_its_runs_table_and_its_charts():
    first, charts, compare = sweep.open_ui_hint("sqlite:////tmp/x/mlflow.db", "3", ["a" * 32], "sweep-1").splitlines()
    runs = "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=sweep-1&workflowType=machine_learning"
    assert f"then open {runs} (tables:" in first
    assert charts == f"charts of the paper's metrics: {runs}&compareRunsMode=CHART"
    assert compare.startswith("compare its 1 trials: ")

"""The sweep's page in the MLflow UI: a saved view that opens on the paper's metrics.

MLflow 3.17's UI lists a run's metrics in the order they were first logged (a loss, for a
training run) and its columns and charts alphabetically, and it keeps a user's column and chart
choices in the browser only. It also opens any view that a URL names (`?viewStateShareKey=KEY`):
the view's state is the JSON in the experiment tag `mlflow.sharedViewState.KEY`. This is what
the UI's own "Share" button writes.

`share(...)` writes such a view for a sweep, keyed by its sweep id:
- the runs table filtered to the sweep's child runs, sorted by the first paper metric (best
  first);
- the paper's metrics as the first columns, then the trial labels (category, row, switches,
  seed);
- all runs shown in the charts;
- in the chart view (`&compareRunsMode=CHART`), a first section "Paper metrics": one bar chart
  per paper metric, and a parallel-coordinates plot from the ablation switches to the first two
  metrics. The UI adds its own charts of the training curves below it.

The view's keys are those MLflow 3.17.2's UI reads back (`searchFilter`, `orderByKey`,
`orderByAsc`, `selectedColumns`, `runsHiddenMode`, `compareRunCharts`, `compareRunSections`,
`isAccordionReordered`). A key the UI does not know is ignored, so a newer UI still opens the
view, maybe with less in it. The links are built in platform/sweep.py.
"""

import json

from platform import tables

SHARED_VIEW_TAG = "mlflow.sharedViewState."
CHART_MODE = "compareRunsMode=CHART"
SECTION = "paper-metrics"

# what each sweep kind reports, in the tables' order (platform/tables.py)
METRICS = {"ablation": tables.DETECTOR_METRICS, "hpo": tables.HPO_SHOWN, "gan": ("KID_x1e3", "clustered_LPIPS"),
           "classify": ("accuracy",)}
# the labels that tell a sweep's trials apart, first the ones a reader compares rows by
LABELS = ("category", "paper_row", "group", "df", "lk", "anomaly_source", "df_update", "lambda_ms", "defect",
          "partition", "seed")
SWITCHES = ("df", "lk", "anomaly_source", "df_update", "lambda_ms")


def state(kind: str, parent_run_id: str, labels: list[str]) -> dict:
    """The view of one sweep: its children, the kind's metrics first, then the `labels` its
    trials carry (in LABELS' order, then the rest)."""
    metrics = METRICS[kind]
    ordered = [k for k in LABELS if k in labels] + sorted(set(labels) - set(LABELS))
    switches = [k for k in SWITCHES if k in labels]
    charts = [{"uuid": f"bar-{metric}", "type": "BAR", "metricKey": metric, "displayName": metric,
               "metricSectionId": SECTION, "runsCountToCompare": 1000, "deleted": False, "isGenerated": False}
              for metric in metrics]
    if switches:
        charts.append({"uuid": "parallel-switches", "type": "PARALLEL", "displayName": "switches → metrics",
                       "selectedParams": switches, "selectedMetrics": list(metrics[:2]), "showAllRuns": True,
                       "metricSectionId": SECTION, "runsCountToCompare": 1000, "deleted": False,
                       "isGenerated": False})
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{metrics[0]}`", "orderByAsc": False,
        "selectedColumns": [f"metrics.`{m}`" for m in metrics] + [f"params.`{k}`" for k in ordered],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        # reordered: the UI keeps this section first and appends its own sections after it
        "compareRunSections": [{"uuid": SECTION, "name": "Paper metrics", "display": True, "isReordered": True,
                                "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
    }


def share(mlflow_client, experiment_id: str, key: str, kind: str, parent_run_id: str, labels: list[str]) -> str:
    """Write the sweep's view as an experiment tag; returns the key its URL names."""
    mlflow_client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key,
                                     json.dumps(state(kind, parent_run_id, labels)))
    return key

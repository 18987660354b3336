"""What the MLflow UI gets from a sweep: a model-training experiment and links to its runs."""

import json
from urllib.parse import parse_qsl, unquote, urlsplit

from platform import sweep, tracking


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

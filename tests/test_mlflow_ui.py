"""What the MLflow UI gets from a sweep: a model-training experiment and links to its runs."""

from platform import tracking


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


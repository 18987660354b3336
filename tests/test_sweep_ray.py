"""Sweeps on a real local Ray runtime with a real SQLite MLflow store (nothing mocked).

One local Ray runtime (`address="local"`, dashboard on: Train V2 needs it) serves the whole
module; every grid has 1-4 trials of the tiny preset or the toy trainer (tests/sweep_toy.py).
Covers both adapter paths with resume after an injected failure, the ablation CLI end to end
(MLflow parent, children, params, metrics, checkpoints, tables; rerun = resume, no duplicate
runs; `report` rebuilds from MLflow alone) and an Optuna study.
"""

import json
import os
import re
from pathlib import Path

import pytest

from platform import runner, storage, sweep, tracking, ui_view
from platform.resources import Resources
from trainables.methods import make_trial_config
from trainables.ray_adapter import run_trial, trial_config

TOY = "sweep_toy:train_toy"  # tests/ is on the workers' path (site-packages holds a `tests` package)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def fit_toy(tmp_path: Path, workers: int, fail_at: int):
    """One toy trial through the adapter, failing once at `fail_at`; returns its Result."""
    from ray import tune

    marker = tmp_path / "failed-once"
    config = make_trial_config(TOY, "tiny", {"epochs": 3, "fail_at": fail_at, "marker": str(marker)})
    trial = {**trial_config(TOY, config.__dict__, name="toy", group="toy", workers=workers,
                            cpus_per_worker=0.9 if workers > 1 else 1, train_storage=str(tmp_path / "train")),
             "category": "weave", "seed": 0}
    trainable = tune.with_resources(run_trial, {"CPU": 0.1} if workers > 1 else {"CPU": 1})
    tuner = tune.Tuner(trainable, param_space={"trial": trial}, run_config=tune.RunConfig(
        name="toy", storage_path=str(tmp_path / "storage"), failure_config=tune.FailureConfig(max_failures=1),
        verbose=0))
    [result] = list(tuner.fit())
    assert result.error is None, result.error
    assert marker.exists()  # the failure did happen
    return result


def test_direct_path_resumes_from_its_tune_checkpoint(ray_runtime, tmp_path):
    result = fit_toy(tmp_path, workers=1, fail_at=2)
    metrics = result.metrics
    assert metrics["final"] == 1 and metrics["epoch"] == 3 and metrics["world"] == 1
    assert metrics["resumed_from"] == 2  # restarted from the epoch-2 checkpoint, not from scratch
    assert metrics["trainer_s"] >= 0 and "report_s" in metrics
    folder = Path(result.checkpoint.path)
    assert (folder / "checkpoint.pt").exists() and (folder / "pictures" / "toy.png").exists()


def test_torchtrainer_path_runs_ddp_and_resumes_its_worker_group(ray_runtime, tmp_path):
    result = fit_toy(tmp_path, workers=2, fail_at=1)
    metrics = result.metrics
    assert metrics["world"] == 2  # a real 2-process torch.distributed group
    assert metrics["final"] == 1 and metrics["resumed_from"] == 1  # Train restarted from its checkpoint
    # the Train run is named after the trial (no timestamp), so a restarted trial finds it again
    runs = [p.name for p in (tmp_path / "train").iterdir() if p.is_dir()]
    assert len(runs) == 1 and runs[0].startswith("train-") and runs[0].endswith(result.metrics["trial_id"])
    checkpoint = Path(metrics["checkpoint_path"])
    assert checkpoint.is_relative_to(tmp_path / "train") and (checkpoint / "pictures" / "toy.png").exists()


def test_ablation_sweep_end_to_end(ray_runtime, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    argv = ["ablation", "--data", "embedded", "--categories", "weave", "bolt", "--rows", "2", "7",
            "--preset", "tiny", "--storage", str(tmp_path / "storage"), "--tracking-uri", uri]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    sweep_id = re.search(r"^sweep (\S+):", out, re.M).group(1)
    assert "Ablation summary in the layout of Table 4" in out and f"mlflow ui --backend-store-uri {uri}" in out
    assert "per-trial overhead:" in out

    parent = tracking.find_parent(uri, sweep_id)
    assert parent.info.status == "FINISHED" and parent.data.params["categories"] == "weave,bolt"
    children = tracking.children(uri, parent.info.run_id)
    assert sorted(c.info.run_name for c in children) == sorted(
        f"{c}-{v}-s0" for c in ("weave", "bolt") for v in ("src_procedural", "df_copy-lk-src_mvtec"))
    in_name_order = [c.info.run_id for c in sorted(children, key=lambda c: c.info.run_name)]
    assert f"compare its 4 trials: {sweep.compare_url(sweep.LOCAL_UI, parent.info.experiment_id, in_name_order)}" in out
    client = tracking.client(uri)
    # the sweep's saved view of the MLflow UI, and the links that open it (platform/ui_view.py)
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[ui_view.SHARED_VIEW_TAG + sweep_id])
    assert view["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    assert view["selectedColumns"][:6] == ["metrics.`image_AUROC`", "metrics.`pixel_AUROC`", "metrics.`pixel_AP`",
                                           "metrics.`image_AP`", "params.`category`", "params.`paper_row`"]
    assert f"runs?viewStateShareKey={sweep_id}&workflowType=machine_learning&compareRunsMode=CHART" in out
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert child.info.status == "FINISHED"
        assert {"category", "group", "seed", "preset", "dataset", "git_sha", "torch", "ray", "mlflow",
                "anomaly_source", "df", "lk", "df_update", "texture_source", "paper_row"} <= set(params)
        assert params["preset"] == "tiny" and params["dataset"] == "embedded" and params["data"] == "embedded"
        # every config field is a param under its --set name, equal to the config.json that ran
        config = json.loads(Path(client.download_artifacts(child.info.run_id, "config.json")).read_text())
        assert {k: str(v) if not isinstance(v, list) else ",".join(map(str, v)) for k, v in config.items()} \
            == {k: params[k] for k in config}
        assert params["texture_source"] == ("procedural (DTD absent)" if params["anomaly_source"] == "dtd"
                                            else "mvtec")
        assert {"image_AUROC", "pixel_AUROC", "image_AP", "pixel_AP", "loss/total", "trial_wall_s",
                "overhead_s", "trainer_s"} <= set(metrics)
        assert len(client.get_metric_history(child.info.run_id, "loss/total")) == 2  # per epoch (tiny: 2)
        artifacts = {f.path for f in client.list_artifacts(child.info.run_id, "checkpoint")}
        # the final weights without optimiser state (the full checkpoint stays in storage); pictures once
        assert "checkpoint/weights.pt" in artifacts and "checkpoint/checkpoint.pt" not in artifacts, artifacts
        assert not any(path.startswith("checkpoint/pictures") for path in artifacts)
        assert [f.path for f in client.list_artifacts(child.info.run_id, "pictures")] == ["pictures/anomaly_maps.png"]
    summary = client.download_artifacts(parent.info.run_id, "tables/v1/ablation_summary.md")
    text = Path(summary).read_text()
    auroc = Path(client.download_artifacts(parent.info.run_id, "tables/v1/ablation_image_AUROC.md")).read_text()
    assert "–" not in auroc and "(2/2)" in auroc  # every cell filled; means over 2 of 2 planned
    assert "| 7 " in text and "99.70" in text
    assert (tmp_path / "storage" / sweep_id / "tables" / "ablation_summary.md").read_text() == text

    # the same command again resumes the finished sweep: no new parent, no duplicate children
    assert sweep.main(argv) == 0
    assert "4 of 4 trials already finished" in capsys.readouterr().out
    assert len(tracking.children(uri, parent.info.run_id)) == 4
    assert tracking.find_parent(uri, sweep_id).info.run_id == parent.info.run_id
    # --resume by id alone: the saved options rebuild the same plan
    assert sweep.main(["ablation", "--resume", sweep_id, "--storage", str(tmp_path / "storage")]) == 0
    assert len(tracking.children(uri, parent.info.run_id)) == 4
    # tables rebuilt from MLflow alone, as a new version
    assert sweep.main(["report", sweep_id, "--tracking-uri", uri]) == 0
    versions = {f.path for f in client.list_artifacts(parent.info.run_id, "tables") if f.is_dir}
    assert versions == {"tables/v1", "tables/v2", "tables/v3", "tables/v4"}


def test_hpo_runs_one_optuna_study_per_category(ray_runtime, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main(["hpo", "--categories", "weave", "--samples", "2", "--preset", "tiny",
                       "--storage", str(tmp_path / "storage"), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    sweep_id = re.search(r"^sweep (\S+):", out, re.M).group(1)
    children = tracking.children(uri, tracking.find_parent(uri, sweep_id).info.run_id)
    assert len(children) == 2
    sampled = [float(c.data.params["lr"]) for c in children]
    assert len(set(sampled)) == 2 and all(1e-5 <= lr <= 3e-3 for lr in sampled)
    assert "Best trial per category by validation image AUROC" in out
    # every report carried the validation metric (ASHA's and Optuna's); the table names the trial
    # that ran to its end with the best one, whatever its test metric
    client = tracking.client(uri)
    ended = [c for c in children if c.data.metrics.get("final") == 1]
    assert ended and all("image_AUROC" in c.data.metrics for c in ended)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_image_AUROC")
        assert len(history) >= (2 if child in ended else 1)
    # ties (the tiny preset's trials often all score 50.00) go to val_pixel_AUROC, then the name
    chosen = max(sorted(ended, key=lambda c: c.data.tags[tracking.TRIAL_NAME_TAG]),
                 key=lambda c: (c.data.metrics["val_image_AUROC"], c.data.metrics["val_pixel_AUROC"]))
    row = next(line for line in out.splitlines() if line.startswith("| weave"))
    assert chosen.data.tags[tracking.TRIAL_NAME_TAG] in row
    client = tracking.client(uri)
    template = make_trial_config("detector", "tiny", {"category": "weave"}).__dict__
    for child in children:  # the whole config, with the sampled values in place, as params and config.json
        config = json.loads(Path(client.download_artifacts(child.info.run_id, "config.json")).read_text())
        assert set(config) == set(template) and set(config) <= set(child.data.params)
        assert config["lr"] == float(child.data.params["lr"]) and config["category"] == "weave"
        assert config["epochs"] == template["epochs"] and child.data.params["img_size"] == str(template["img_size"])


def test_two_phase_sweep_hands_each_checkpoint_to_its_dependents(ray_runtime, tmp_path, capsys):
    """The GAN sweep's shape (stage 1 once, stage 2 per λ starting from it) with the toy trainer."""
    from search_spaces.base import Phase, SweepPlan, TrialSpec, validate_plan

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = TrialSpec(TOY, "bolt-stage1-s0", "stage 1", "bolt", 0, {"stage": 1}, {"category": "bolt"})
    second = tuple(TrialSpec(TOY, f"bolt-hole-lambda{lam:g}-s0", f"λ={lam:g}", "bolt", 0,
                             {"stage": 2, "defect": "hole", "lambda_ms": lam}, {"category": "bolt"},
                             needs=first.name, needs_key="start_from") for lam in (0.0, 0.1))
    plan = validate_plan(SweepPlan("gan", "tiny", "embedded", "embedded", {"toy": True},
                                   (Phase("stage1", (first,)), Phase("stage2", second))))
    resources = Resources(workers=1, gpus_per_trial=0, cpus_per_worker=1, max_concurrent=None)
    run = runner.Sweep(plan, {}, storage.make_sweep_id(plan), resources, str(tmp_path / "storage"), uri, "toy")
    outcome = runner.run(run)
    assert (outcome.finished, outcome.failed) == (3, 0)
    assert [t.name for t in outcome.tables] == ["dfmgan_bolt"]
    runs = {r.info.run_name: r for r in tracking.children(uri, tracking.find_parent(uri, run.sweep_id).info.run_id)}
    assert set(runs) == {"bolt-stage1-s0", "bolt-hole-lambda0-s0", "bolt-hole-lambda0.1-s0"}
    for name in ("bolt-hole-lambda0-s0", "bolt-hole-lambda0.1-s0"):
        assert runs[name].data.metrics["started_from_epoch"] == 3  # stage 1's last checkpoint
        assert runs[name].data.metrics["resumed_from"] == 0       # a fresh run, not a resume
    # a checkpoint per epoch, and storage keeps each trial's newest only: in a grid phase Tune
    # keeps them all (no experiment snapshot per checkpoint) and the trial deletes the older ones
    kept = [p.relative_to(tmp_path / "storage") for p in (tmp_path / "storage").rglob("checkpoint_0*")]
    assert sorted(p.name for p in kept) == ["checkpoint_000002"] * 3, kept


def test_gan_sweep_trains_stage1_once_and_stage2_per_lambda_from_it(ray_runtime, tmp_path, capsys):
    """The real DFMGAN trainers (tiny preset) through the sweep: stage 1's checkpoint reaches
    both stage-2 trials, which generate triplets; KID and LPIPS without weights are marked."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main(["gan", "--categories", "bolt", "--defects", "hole", "--lambdas", "0", "0.1",
                       "--preset", "tiny", "--storage", str(tmp_path / "storage"), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    sweep_id = re.search(r"^sweep (\S+):", out, re.M).group(1)
    assert "3/3 trials finished" in out and "DFMGAN on bolt" in out
    parent = tracking.find_parent(uri, sweep_id)
    runs = {r.info.run_name: r for r in tracking.children(uri, parent.info.run_id)}
    assert set(runs) == {"bolt-stage1-s0", "bolt-hole-lambda0-s0", "bolt-hole-lambda0.1-s0"}
    client = tracking.client(uri)
    for name in ("bolt-hole-lambda0-s0", "bolt-hole-lambda0.1-s0"):
        run = runs[name]
        assert run.data.params["defect"] == "hole" and run.data.metrics["stage"] == 2
        assert 0 <= run.data.metrics["mask_coverage_ok"] <= 1
        assert run.data.tags["KID_x1e3"] == "unavailable"  # no Inception weights here: never a number
        pictures = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "pictures")}
        assert {"triplets_grid.png", "triplet_000_image.png", "triplet_000_mask.png",
                "triplet_000_good.png"} <= pictures
    table = Path(client.download_artifacts(parent.info.run_id, "tables/v1/dfmgan_bolt.md")).read_text()
    assert "DFMGAN λ=0.0" in table and "DFMGAN λ=0.1" in table and "unavailable" in table


def test_sweeps_on_a_user_dataset_on_disk(ray_runtime, tmp_path, monkeypatch, capsys):
    """`--data PATH` (relative, resolved on the driver) reaches every worker: a category the
    embedded set lacks trains, and one it has trains on the user's pixels, not the embedded ones.
    The GAN sweep hands stage 1's checkpoint, trained on the same folder, to stage 2."""
    from user_dataset import write_user_dataset

    data = write_user_dataset(tmp_path / "my data").resolve()
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--preset", "tiny", "--storage", str(tmp_path / "storage"), "--tracking-uri", uri]
    assert sweep.main(["ablation", "--data", "my data", "--categories", "gizmo", "weave", "--rows", "2", *common]) == 0
    out = capsys.readouterr().out
    mine = tracking.children(uri, tracking.find_parent(uri, re.search(r"^sweep (\S+):", out, re.M).group(1))
                             .info.run_id)
    assert sorted(r.info.run_name for r in mine) == ["gizmo-src_procedural-s0", "weave-src_procedural-s0"]
    for run in mine:
        assert run.info.status == "FINISHED"
        assert run.data.params["data"] == str(data) and run.data.params["dataset"] == "mvtec"
        assert run.data.tags["dataset"] == "mvtec"  # what the trainer itself reported reading

    assert sweep.main(["ablation", "--categories", "weave", "--rows", "2", *common]) == 0
    out = capsys.readouterr().out
    [embedded] = tracking.children(uri, tracking.find_parent(uri, re.search(r"^sweep (\S+):", out, re.M).group(1))
                                   .info.run_id)
    client = tracking.client(uri)
    weave = next(r for r in mine if r.data.params["category"] == "weave")
    losses = [[m.value for m in client.get_metric_history(r.info.run_id, "loss/total")] for r in (weave, embedded)]
    assert losses[0] != losses[1] and embedded.data.params["data"] == "embedded"

    assert sweep.main(["gan", "--data", str(data), "--categories", "gizmo", "--defects", "dent",
                       "--lambdas", "0.1", *common]) == 0
    out = capsys.readouterr().out
    assert "2/2 trials finished" in out
    runs = {r.info.run_name: r for r in tracking.children(
        uri, tracking.find_parent(uri, re.search(r"^sweep (\S+):", out, re.M).group(1)).info.run_id)}
    assert set(runs) == {"gizmo-stage1-s0", "gizmo-dent-lambda0.1-s0"}
    stage2 = runs["gizmo-dent-lambda0.1-s0"]
    assert all(r.data.params["data"] == str(data) for r in runs.values())
    assert stage2.data.params["stage1"].startswith(str(tmp_path / "storage"))  # stage 1's checkpoint
    assert stage2.data.params["defect"] == "dent" and 0 <= stage2.data.metrics["mask_coverage_ok"] <= 1


def test_weights_a_trial_cannot_train_without_are_checked_on_every_node_first(ray_runtime, tmp_path):
    """df_source=vgg19 cannot train without VGG19's ImageNet weights: a node that lacks them is
    one error line, saying how to provision them, before any trial starts or anything is written."""
    from trainables.errors import WeightsUnavailable
    from trainables.weights import resolve_weights, weight_url

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    try:
        resolve_weights("vgg19", weights_dir)
        pytest.skip("VGG19's weights are provisioned on this machine")
    except WeightsUnavailable:
        pass
    argv = ["ablation", "--categories", "weave", "--rows", "7", "--preset", "tiny", "--set", "df_source=vgg19",
            "--set", f"weights_dir={weights_dir}", "--storage", str(tmp_path / "storage"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    with pytest.raises(runner.UserInputError, match=r"^the node at \S+: pretrained weights 'vgg19' not provisioned: "
                                                 r".*python -m platform.weights fetch vgg19"):
        sweep.main(argv)
    assert not (tmp_path / "storage").exists() and not (tmp_path / "mlflow.db").exists()

    (weights_dir / Path(weight_url("vgg19")).name).touch()   # the file the trainer would load: the check passes
    runner.check_nodes("embedded", ["weave"], [("vgg19", str(weights_dir))])
    with pytest.raises(runner.UserInputError, match="cannot read"):
        runner.check_nodes(str(tmp_path / "nowhere"), ["weave"], [])

"""MLflow tracking of sweeps, from the driver only: a parent run per sweep, a child per trial.

Workers report to Ray; `MLflowTrialCallback`, a Tune callback running in the sweep driver,
turns those reports into MLflow runs. Only this process writes, so a SQLite store is safe
(docs/platform.md §4) and no credential travels to workers. The stock
`MLflowLoggerCallback` is not used: it logs Tune's bookkeeping as metrics and has no parent.

- Parent run: one per sweep, named and tagged with the deterministic sweep id; created once,
  reopened (status RUNNING again) by `--resume`; holds the sweep's options as params, its
  record as `sweep.json`, the planned trials as `plan.json` (the tables are built from the
  plan, so a trial that never finished shows as a missing cell) and, at the end, the result
  tables (platform/tables.py).
- Child run: one per trial (tag `mlflow.parentRunId`), found again by its trial name when a
  trial restarts or a sweep resumes, so no run is ever duplicated. Params: every field of the
  trainer's config under its `--set` name, with the sampled values of an HPO trial in place,
  plus the trial's labels (group, paper row, honest source name), dataset, git sha and library
  versions; the same config as `config.json`. It is the flat dict the trial carried to its
  worker, so what is recorded is what ran. Metrics: every numeric value of every report under the trainer's own stable
  names (step = the report's index); strings ("unavailable" and its `_note`) and booleans
  become tags.
  At the end: the last checkpoint folder (`checkpoint/`, with `pictures/*.png`), pictures
  also under `pictures/`, and the trial's wall time and overhead (`trial_wall_s`,
  `overhead_s` = wall time minus `trainer_s`, the loop's own time).

The default store is a SQLite file in the repo (`mlflow.db`); its schema is created here,
once, before any trial starts (concurrent first-time initialisation corrupts it, docs/platform.md §4).
"""

import json
import math
import numbers
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from platform.tuner import trial_name

DEFAULT_EXPERIMENT = "defect-sweeps"
TRIAL_NAME_TAG = "trial_name"
SWEEP_ID_TAG = "sweep_id"
PARENT_TAG = "mlflow.parentRunId"
STATUS_EVERY_S = 30.0   # a line about running trials at most this often
# what Tune and Train add to every result: bookkeeping, not the trainer's metrics
_NOT_METRICS = {"training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip",
                "hostname", "pid", "time_this_iter_s", "timestamp", "date", "time_since_restore",
                "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name",
                "done", "trial_id", "experiment_tag", "should_checkpoint", "checkpoint_path"}


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file `mlflow.db` in the repo."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, created on first use (artifacts next to a SQLite file)."""
    mlflow_client = client(tracking_uri)  # the first call on a new SQLite file creates its schema
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def find_parent(tracking_uri: str, sweep_id: str):
    """The parent run of a sweep in any experiment, or None (never creates a SQLite file)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return None
    mlflow_client = client(tracking_uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = mlflow_client.search_runs(experiments, f"tags.{SWEEP_ID_TAG} = '{sweep_id}' "
                                                  f"and tags.sweep_role = 'parent'", max_results=2)
    return runs[0] if runs else None


def open_parent(tracking_uri: str, experiment: str, sweep_id: str, params: dict[str, Any],
                record: dict, planned: list[dict]) -> str:
    """Create the sweep's parent run, or reopen it (RUNNING again) when it exists."""
    mlflow_client = client(tracking_uri)
    existing = find_parent(tracking_uri, sweep_id)
    if existing is not None:
        mlflow_client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    run = mlflow_client.create_run(experiment_id(tracking_uri, experiment), run_name=sweep_id,
                                   tags={SWEEP_ID_TAG: sweep_id, "sweep_role": "parent",
                                         "sweep_kind": record["kind"], "dataset": record["dataset"]})
    _log_params(mlflow_client, run.info.run_id, {**params, **provenance()})
    mlflow_client.log_dict(run.info.run_id, record, "sweep.json")
    mlflow_client.log_dict(run.info.run_id, planned, "plan.json")
    return run.info.run_id


def parent_record(tracking_uri: str, sweep_id: str) -> dict | None:
    """The `sweep.json` a sweep's parent run holds, or None when there is no such sweep."""
    parent = find_parent(tracking_uri, sweep_id)
    if parent is None:
        return None
    return json.loads(Path(client(tracking_uri).download_artifacts(parent.info.run_id, "sweep.json")).read_text())


def close_parent(tracking_uri: str, parent_run_id: str, failed: int, metrics: dict[str, float]) -> None:
    mlflow_client = client(tracking_uri)
    for key, value in metrics.items():
        mlflow_client.log_metric(parent_run_id, key, value)
    mlflow_client.set_terminated(parent_run_id, status="FAILED" if failed else "FINISHED")


def children(tracking_uri: str, parent_run_id: str) -> list:
    """Every child run of a parent (all pages)."""
    mlflow_client = client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                         max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def log_untrained(tracking_uri: str, parent_run_id: str, base_params: dict, trial, status: str,
                  tags: dict[str, str], metrics: dict | None = None) -> str:
    """A child run for a planned trial that Tune does not run: one skipped because a trial it
    needs failed (status KILLED, tag `skipped` = the reason), or one whose finished checkpoint an
    earlier sweep made (FINISHED, tag `reused_from`, that run's final metrics). Found again by name."""
    mlflow_client = client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    found = mlflow_client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                      f"and tags.{TRIAL_NAME_TAG} = '{trial.name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = mlflow_client.create_run(parent.info.experiment_id, run_name=trial.name, tags={
            PARENT_TAG: parent_run_id, TRIAL_NAME_TAG: trial.name, SWEEP_ID_TAG: parent.data.tags[SWEEP_ID_TAG],
            "sweep_role": "trial", "group": trial.group}).info.run_id
        from platform.tuner import labels

        _log_params(mlflow_client, run_id, {**base_params, **labels(trial), "group": trial.group,
                                            "method": trial.method, "workers": 1, **trial.config})
        mlflow_client.log_dict(run_id, trial.config, "config.json")
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(value)[:5000])
    for key, value in (metrics or {}).items():
        if key in _NOT_METRICS:
            continue
        if isinstance(value, str):
            mlflow_client.set_tag(run_id, key, value[:5000])
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isinf(float(value)):
            mlflow_client.log_metric(run_id, key, float(value))
    mlflow_client.set_terminated(run_id, status=status)
    return run_id


def provenance() -> dict[str, str]:
    """Code version and library versions, logged on every run."""
    import mlflow
    import ray
    import torch

    return {"git_sha": git_sha(), "python": sys.version.split()[0], "torch": torch.__version__,
            "ray": ray.__version__, "mlflow": mlflow.__version__}


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


class MLflowTrialCallback(Callback):
    """Child run per Tune trial under a sweep's parent run (see the module docstring).

    Pickled with the Tuner (so a restored sweep logs to the same parent): holds plain values
    only and opens its MLflow client lazily.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, base_params: dict, storage: str, total: int):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.base_params = base_params  # dataset, git sha, versions: the same for every child
        self.storage = storage
        self.total = total
        self._client = None
        self._runs: dict[str, str] = {}       # Tune trial id -> MLflow run id
        self._started: dict[str, float] = {}  # Tune trial id -> monotonic start time
        self._last_status = 0.0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.monotonic()
        self._run_of(trial)
        print(f"[{self._finished(trials)}/{self.total}] {trial_name(trial)}: started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self._run_of(trial)
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        metrics, tags = [], {}
        for key, value in result.items():
            if key in _NOT_METRICS or isinstance(value, dict):
                continue
            if isinstance(value, bool):
                tags[key] = str(value)
            elif isinstance(value, numbers.Real):
                if math.isinf(float(value)):
                    continue  # the store rejects infinities; NaN is kept (it means "diverged")
                metrics.append(Metric(key, float(value), now, step))
            elif isinstance(value, str):
                tags[key] = value[:5000]
        self.client.log_batch(run_id, metrics=metrics)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        if time.monotonic() - self._last_status > STATUS_EVERY_S:
            self._last_status = time.monotonic()
            running = [t for t in trials if t.status == "RUNNING"]
            shown = ", ".join(f"{trial_name(t)} {_progress(result if t is trial else t.last_result)}"
                              for t in running[:4])
            print(f"[{self._finished(trials)}/{self.total}] running {len(running)}: {shown}"
                  f"{', ...' if len(running) > 4 else ''}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_of(trial)
        result = trial.last_result or {}
        wall = time.monotonic() - self._started.get(trial.trial_id, time.monotonic())
        timing = {"trial_wall_s": round(wall, 3)}
        if "trainer_s" in result and trial.trial_id in self._started:
            timing["overhead_s"] = round(wall - float(result["trainer_s"]), 3)
        for key, value in timing.items():
            self.client.log_metric(run_id, key, value)
        folder = self._checkpoint_folder(trial, result)
        if folder is not None:
            with folder as path:
                self.client.log_artifacts(run_id, path, "checkpoint")
                if (Path(path) / "pictures").is_dir():
                    self.client.log_artifacts(run_id, str(Path(path) / "pictures"), "pictures")
        self.client.set_terminated(run_id, status="FINISHED")
        stopped = "final" not in result  # a scheduler (ASHA) ended it before its last report
        if stopped:
            self.client.set_tag(run_id, "stopped_early", "true")
        self._print(trials, trial, "stopped early by the scheduler" if stopped else "done", result, timing)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_of(trial)
        reason = _last_line(getattr(trial, "error_file", None))
        self.client.set_tag(run_id, "error", reason[:5000])
        self.client.set_terminated(run_id, status="FAILED")
        self._print(trials, trial, f"FAILED ({reason})", trial.last_result or {}, {})

    # ------------------------------------------------------------ helpers

    def _run_of(self, trial) -> str:
        """The trial's child run: cached, found again by name, or created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        spec = trial.config["trial"]
        name = trial_name(trial)
        parent = self.client.get_run(self.parent_run_id)
        found = self.client.search_runs(
            [parent.info.experiment_id],
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.{TRIAL_NAME_TAG} = '{name}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(parent.info.experiment_id, run_name=name, tags={
                PARENT_TAG: self.parent_run_id, TRIAL_NAME_TAG: name, SWEEP_ID_TAG: parent.data.tags[SWEEP_ID_TAG],
                "sweep_role": "trial", "ray_trial_id": trial.trial_id, "group": spec["group"]})
            run_id = run.info.run_id
            config = {**spec["config"], **(trial.config.get("search") or {})}  # what the worker runs
            _log_params(self.client, run_id, {**self.base_params, **spec["params"], "group": spec["group"],
                                              "method": spec["method"], "workers": spec["workers"], **config})
            self.client.log_dict(run_id, config, "config.json")
        self._runs[trial.trial_id] = run_id
        return run_id

    def _checkpoint_folder(self, trial, result):
        """A context manager yielding a local copy (or the local path) of the last checkpoint."""
        path = result.get("checkpoint_path")
        if path:  # the nested TorchTrainer path: Train's checkpoint in the sweep storage
            import pyarrow.fs

            from ray.tune import Checkpoint

            filesystem, _ = pyarrow.fs.FileSystem.from_uri(self.storage) if "://" in self.storage \
                else (pyarrow.fs.LocalFileSystem(), None)
            return _local(Checkpoint(path, filesystem))
        if trial.checkpoint is not None:  # the direct path: Tune's own checkpoint
            return _local(trial.checkpoint)
        return None

    @staticmethod
    def _finished(trials) -> int:
        return sum(t.status in ("TERMINATED", "ERROR") for t in trials)

    def _print(self, trials, trial, status: str, result: dict, timing: dict) -> None:
        name = trial_name(trial)
        keys = ("image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP", "KID_x1e3", "clustered_LPIPS", "accuracy")
        shown = " ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                         for k in keys if k in result)
        times = ""
        if timing:
            times = f" in {timing['trial_wall_s']:.1f}s"
            if "overhead_s" in timing:
                times += f" (trainer {float(result['trainer_s']):.1f}s, overhead {timing['overhead_s']:.1f}s)"
        done = self._finished(trials) + (trial.status not in ("TERMINATED", "ERROR"))
        print(f"[{done}/{self.total}] {name}: {status}{times} {shown}".rstrip(), flush=True)


def _last_line(error_file) -> str:
    """The exception line of a trial's error file (its last non-empty line)."""
    try:
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        return "see the Tune trial's error.txt"
    return lines[-1].strip()[:500] if lines else "unknown error"


def _progress(result: dict | None) -> str:
    if not result:
        return "starting"
    for key in ("epoch", "kimg"):
        if key in result:
            return f"{key} {result[key]:g}"
    return f"report {result.get('training_iteration', 0)}"


class _local:
    """`with _local(checkpoint) as path`: the checkpoint's local folder (downloaded if remote)."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self._context = None

    def __enter__(self) -> str:
        self._context = self.checkpoint.as_directory()
        return str(self._context.__enter__())

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def _log_params(mlflow_client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k), _param_value(v)) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)[:6000]

"""MLflow tracking of sweeps, from the driver only: a parent run per sweep, a child per trial.

Workers report to Ray; `MLflowTrialCallback`, a Tune callback running in the sweep driver,
turns those reports into MLflow runs. Only this process writes, so a SQLite store is safe
(docs/platform.md §6.1) and no credential travels to workers. The stock
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
  At the end: the final weights (`checkpoint/weights.pt`; the full checkpoint with
  optimiser state only with `--log-full-checkpoint`), the pictures under `pictures/`, and the trial's wall time and overhead (`trial_wall_s`,
  `overhead_s` = wall time minus `trainer_s`, the loop's own time).

The default store is a SQLite file in the repo (`mlflow.db`); its schema is created here,
once, before any trial starts (concurrent first-time initialisation corrupts it, docs/platform.md §6.1).
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

from platform import storage
from platform.tuner import trial_name
from trainables.errors import UserInputError
from platform.writer import STEP_METRIC, RunRef, Writer
from trainables.ray_adapter import RESENT, USER_ERROR

# the sweep prints its own progress: MLflow's download bars ("Downloading artifacts: 100%|...")
# would land on stderr each time the driver reads a sweep's record or plan back
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DEFAULT_EXPERIMENT = "defect-sweeps"
TRIAL_NAME_TAG = "trial_name"
SWEEP_ID_TAG = "sweep_id"
PARENT_TAG = "mlflow.parentRunId"
# the experiment's kind: model training, not GenAI (its Traces/Overview pages); see experiment_id
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
STATUS_EVERY_S = 30.0   # a line about running trials at most this often
# what Tune and Train add to every result: bookkeeping, not the trainer's metrics
_NOT_METRICS = {"training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip",
                "hostname", "pid", "time_this_iter_s", "timestamp", "date", "time_since_restore",
                "timesteps_since_restore", "iterations_since_restore", "config", "checkpoint_dir_name",
                "done", "trial_id", "experiment_tag", "should_checkpoint", "checkpoint_path", RESENT}


def default_tracking_uri(root: str | os.PathLike = ".") -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file `mlflow.db` in the repo."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def check_store(tracking_uri: str) -> None:
    """UserInputError (one line) unless the MLflow store answers now: a malformed URI, a SQLite file
    in a folder that does not exist, a server that is down. Checked before Ray starts."""
    expected = "expected sqlite:///ABSOLUTE/PATH.db, a database URI, or http(s)://HOST:PORT of an MLflow server"
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0] if "://" in tracking_uri else ""
    if scheme not in ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks"):
        raise UserInputError(f"--tracking-uri {tracking_uri}: unknown scheme {scheme!r}; {expected}")
    if scheme == "sqlite":
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise UserInputError(f"--tracking-uri {tracking_uri}: the folder {folder} does not exist; {expected}")
        return
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise UserInputError(f"--tracking-uri {tracking_uri}: the MLflow server does not answer "
                                 f"({getattr(error, 'reason', error)}); start it, or {expected}") from None
        return
    try:
        from mlflow.tracking._tracking_service.utils import _get_store

        _get_store(tracking_uri)
    except Exception as error:  # MLflow's message for an unknown scheme or a bad database URI
        raise UserInputError(f"--tracking-uri {tracking_uri}: {str(error).strip().splitlines()[0][:200]}; "
                             f"{expected}") from None


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, created on first use (artifacts next to a SQLite file), marked as a
    model-training experiment (also an existing one the sweep reuses).

    An MLflow UI built without the sidebar's workflow switch picks the experiment's pages from
    this tag. The UI that MLflow 3.17.2 ships has the switch and ignores the tag: the switch
    (`?workflowType=` in the URL, else the browser's last choice, GenAI at first) decides, so
    the links the sweep prints carry `workflowType=machine_learning` (platform/sweep.py).
    """
    mlflow_client = client(tracking_uri)  # the first call on a new SQLite file creates its schema
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location,
                                           tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


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
    return read_json(client(tracking_uri), parent.info.run_id, "sweep.json")


def read_json(mlflow_client, run_id: str, path: str):
    """A JSON artifact of a run, read through a temporary folder that is removed after (MLflow's
    own download folder would be left behind in the system's temp dir on every call)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="defect-sweeps-") as folder:
        return json.loads(Path(mlflow_client.download_artifacts(run_id, path, dst_path=folder)).read_text())


def close_parent(tracking_uri: str, parent_run_id: str, status: str, metrics: dict[str, float]) -> None:
    mlflow_client = client(tracking_uri)
    for key, value in metrics.items():
        mlflow_client.log_metric(parent_run_id, key, value)
    mlflow_client.set_terminated(parent_run_id, status=status)


def logged_steps(tracking_uri: str, parent_run_id: str, names: set[str]) -> dict[str, int]:
    """The last step each named trial's child run logged (trials without a child are absent):
    what a resumed trial need not re-send (trainables/ray_adapter._Reporter)."""
    mlflow_client = client(tracking_uri)
    return {run.info.run_name: last_step(mlflow_client, run.info.run_id)
            for run in children(tracking_uri, parent_run_id) if run.info.run_name in names}


def last_step(mlflow_client, run_id: str) -> int:
    """The highest report step a child run logged (0 before its first report)."""
    return max((m.step for m in mlflow_client.get_metric_history(run_id, STEP_METRIC)), default=0)


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


class TrackingOutage(RuntimeError):
    """The MLflow store stayed unreachable past the writer's bound; the message says what is unsaved."""


class MLflowTrialCallback(Callback):
    """Child run per Tune trial under a sweep's parent run (see the module docstring).

    Every MLflow call goes through a background `Writer` (platform/writer.py): the hooks only
    queue, so a slow or restarting store never stalls Tune nor raises into it, until the
    writer gives up after its outage bound; then the next hook raises `TrackingOutage`.
    Pickled with the Tuner of an HPO phase (restored on resume): the writer is not pickled, and
    an unpickled callback takes the running sweep's settings (`LIVE`), so flags given again on
    resume (the tracking URI) are the ones used.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, base_params: dict, storage: str, total: int,
                 writer: Writer, sweep_storage: str, full_checkpoint: bool = False):
        self.full_checkpoint = full_checkpoint  # MLflow keeps checkpoint.pt too, not only weights.pt
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.base_params = base_params  # dataset, git sha, versions: the same for every child
        self.storage = storage
        self.total = total
        self.writer = writer
        self.sweep_storage = sweep_storage  # where finished trials are recorded (platform/storage.py)
        self._refs: dict[str, RunRef] = {}     # Tune trial id -> its child run
        self._ended: set[str] = set()          # Tune trial ids whose run was ended
        self._started: dict[str, float] = {}   # Tune trial id -> monotonic start time
        self._last_status = 0.0
        LIVE[parent_run_id] = self

    def __getstate__(self):
        return {"parent_run_id": self.parent_run_id}

    def __setstate__(self, state):
        live = LIVE.get(state["parent_run_id"])
        assert live is not None, "restore a phase only after creating this sweep's callback"
        self.__dict__.update(live.__dict__)

    def unended(self) -> list[RunRef]:
        return [ref for trial_id, ref in self._refs.items() if trial_id not in self._ended]

    # ------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info):
        self._check()
        self._started[trial.trial_id] = time.monotonic()
        self._ref(trial)
        print(f"[{self._finished(trials)}/{self.total}] {trial_name(trial)}: started", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._check()
        ref = self._ref(trial)
        metrics, tags = {}, {}
        for key, value in result.items():
            if key in _NOT_METRICS or isinstance(value, dict):
                continue
            if isinstance(value, bool):
                tags[key] = str(value)
            elif isinstance(value, numbers.Real):
                if not math.isinf(float(value)):  # the store rejects infinities; NaN means "diverged"
                    metrics[key] = float(value)
            elif isinstance(value, str):
                tags[key] = value[:5000]
        # the report's index over the trial's whole life (restarts included): a replay is dropped
        step = int(result.get("report_index", result.get("training_iteration", 0)))
        self.writer.log(ref, step, metrics, tags)
        if time.monotonic() - self._last_status > STATUS_EVERY_S:
            self._last_status = time.monotonic()
            running = [t for t in trials if t.status == "RUNNING"]
            shown = ", ".join(f"{trial_name(t)} {_progress(result if t is trial else t.last_result)}"
                              for t in running[:4])
            print(f"[{self._finished(trials)}/{self.total}] running {len(running)}: {shown}"
                  f"{', ...' if len(running) > 4 else ''}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._check()
        ref = self._ref(trial)
        result = trial.last_result or {}
        if USER_ERROR in result:  # the trainer refused its input: failed, not retried
            self._end(trial, "FAILED", {"error": result[USER_ERROR][:5000]})
            self._print(trials, trial, f"FAILED ({result[USER_ERROR]})", result, {})
            return
        wall = time.monotonic() - self._started.get(trial.trial_id, time.monotonic())
        timing = {"trial_wall_s": round(wall, 3)}
        if "trainer_s" in result and trial.trial_id in self._started:
            timing["overhead_s"] = round(wall - float(result["trainer_s"]), 3)
        folder = self._checkpoint_folder(trial, result)

        def finish(client, ref):
            for key, value in timing.items():
                client.log_metric(ref.run_id, key, value)
            if folder is not None:
                with folder as path:
                    log_checkpoint(client, ref.run_id, Path(path), self.full_checkpoint)
        self.writer.call(ref, finish, f"{ref.name}: checkpoint and timings")
        stopped = "final" not in result  # a scheduler (ASHA) ended it before its last report
        checkpoint = storage.checkpoint_path(result, trial.checkpoint, self.storage)
        storage.write_done(self.sweep_storage, trial_name(trial), checkpoint)
        self._end(trial, "FINISHED", {"stopped_early": "true"} if stopped else {})
        self._print(trials, trial, "stopped early by the scheduler" if stopped else "done", result, timing)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check()
        reason = _last_line(getattr(trial, "error_file", None))
        self._end(trial, "FAILED", {"error": reason[:5000]})
        self._print(trials, trial, f"FAILED ({reason})", trial.last_result or {}, {})

    # ------------------------------------------------------------ helpers

    def _check(self) -> None:
        if self.writer.failed:
            raise TrackingOutage(self.writer.failed)

    def _end(self, trial, status: str, tags: dict[str, str]) -> None:
        self._ended.add(trial.trial_id)
        self.writer.call(self._ref(trial), lambda client, ref: end_run(client, ref.run_id, status, tags),
                         f"{trial_name(trial)}: {status}")

    def _ref(self, trial) -> RunRef:
        """The trial's child run: known, or queued to be found again by name, or created."""
        if trial.trial_id in self._refs:
            return self._refs[trial.trial_id]
        spec = trial.config["trial"]
        ref = RunRef(trial_name(trial))
        config = {**spec["config"], **(trial.config.get("search") or {})}  # what the worker runs
        params = {**self.base_params, **spec["params"], "group": spec["group"], "method": spec["method"],
                  "workers": spec["workers"], **config}
        tags = {TRIAL_NAME_TAG: ref.name, "sweep_role": "trial", "ray_trial_id": trial.trial_id,
                "group": spec["group"]}
        self.writer.call(ref, lambda client, ref: open_child(client, self.parent_run_id, ref, tags, params, config),
                         f"{ref.name}: create its run")
        self._refs[trial.trial_id] = ref
        return ref

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
        keys = ("val_image_AUROC", "image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP", "KID_x1e3",
                "clustered_LPIPS", "accuracy")
        shown = " ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                         for k in keys if k in result)
        times = ""
        if timing:
            times = f" in {timing['trial_wall_s']:.1f}s"
            if "overhead_s" in timing:
                times += f" (trainer {float(result['trainer_s']):.1f}s, overhead {timing['overhead_s']:.1f}s)"
        done = self._finished(trials) + (trial.status not in ("TERMINATED", "ERROR"))
        print(f"[{done}/{self.total}] {name}: {status}{times} {shown}".rstrip(), flush=True)


LIVE: dict[str, MLflowTrialCallback] = {}   # parent run id -> the running sweep's callback


def open_child(mlflow_client, parent_run_id: str, ref: RunRef, tags: dict, params: dict, config: dict) -> None:
    """Find the trial's child run again by name (RUNNING again, its last logged step known), or
    create it with its params and config.json. Runs in the writer's thread."""
    parent = mlflow_client.get_run(parent_run_id)
    found = mlflow_client.search_runs(
        [parent.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.{TRIAL_NAME_TAG} = '{ref.name}'", max_results=1)
    if found:
        ref.run_id = found[0].info.run_id
        mlflow_client.update_run(ref.run_id, status="RUNNING")
        ref.last_step = last_step(mlflow_client, ref.run_id)
        return
    run = mlflow_client.create_run(parent.info.experiment_id, run_name=ref.name, tags={
        PARENT_TAG: parent_run_id, SWEEP_ID_TAG: parent.data.tags[SWEEP_ID_TAG], **tags})
    ref.run_id = run.info.run_id
    _log_params(mlflow_client, ref.run_id, params)
    mlflow_client.log_dict(ref.run_id, config, "config.json")


def log_checkpoint(mlflow_client, run_id: str, folder: Path, full: bool) -> None:
    """A trial's last checkpoint folder into its run: under `checkpoint/` the final weights
    (`weights.pt`, trainables/ray_adapter.py) and the small files, the full `checkpoint.pt`
    (optimiser state too, 1.4 GB for the paper detector) only when `full`; the pictures once,
    under `pictures/`. The full checkpoint stays in the sweep's storage either way."""
    from trainables.checkpoint import CHECKPOINT_FILE

    for item in sorted(folder.iterdir()):
        if item.is_file() and (item.name != CHECKPOINT_FILE or full):
            mlflow_client.log_artifact(run_id, str(item), "checkpoint")
    if (folder / "pictures").is_dir():
        mlflow_client.log_artifacts(run_id, str(folder / "pictures"), "pictures")


def end_run(mlflow_client, run_id: str, status: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)
    mlflow_client.set_terminated(run_id, status=status)


def end_running_children(tracking_uri: str, parent_run_id: str, status: str = "KILLED") -> list[str]:
    """End every child still RUNNING (an interrupted sweep, a driver that died); their names."""
    mlflow_client = client(tracking_uri)
    ended = []
    for run in children(tracking_uri, parent_run_id):
        if run.info.status == "RUNNING":
            mlflow_client.set_terminated(run.info.run_id, status=status)
            ended.append(run.info.run_name)
    return ended


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

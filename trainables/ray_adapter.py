"""Ray adapter: runs a trainer entry point inside a Ray Tune function trial.

`run_trial(config)` is the one function trainable every sweep hands to Tune. Its config carries
the trainer's whole flat config as the driver built and validated it; the worker rebuilds the
frozen config from that dict plus only the sampled values (HPO) and the resume pointer
(`worker_config`), so what the driver recorded is what runs. The trainer loop is the same
plain function in both paths below; only its `report` callable differs.

- One worker (the common case: a CPU, a GPU or a fraction of one per trial): the loop runs
  directly in the Tune trial actor. Each report becomes `tune.report`, with a
  `tune.Checkpoint` when the loop passes a checkpoint; a restarted trial resumes from
  `tune.get_checkpoint()`. No nested Train run, so no per-trial worker-group start-up
  (about 20 s a trial on 2 cores, docs/platform.md §3.3).
- Several workers: the trial builds a Train V2 `TorchTrainer` (N workers, CPU or GPU, torch
  DDP process group; the loop shards and wraps its nets itself) with `TuneReportCallback`
  forwarding rank 0's reports to Tune, a run name derived from the trial id (no timestamp,
  so a restarted trial resumes its Train run), finite failure limits (an unfinite
  `controller_failure_limit` turns a worker-startup deadlock into an endless retry), and
  rank-0 checkpoints; a restarted worker group resumes from `ray.train.get_checkpoint()`.

Checkpoint dicts are persisted with `trainables.checkpoint.save_checkpoint` into a temporary
folder, plus `pictures/*.png` when the dict carries pictures and `triplets.npz` when it
carries a stage-2 triplet bank (trainables/checkpoint.persist), and that folder is handed to Ray,
which copies it to the sweep's storage, with `reports.json` (the trial's reports up to the one
that saved it) and, in a final checkpoint, `weights.pt` (the networks alone: what MLflow keeps).
Storage keeps only the newest checkpoint of a run (Ray's `num_to_keep`, or the trial itself with
`prune_checkpoints`): resuming needs nothing older, and the paper detector's is 1.4 GB. Every
report carries `report_index`, which continues across restarts and resumes, so the driver never
logs a step twice, and `trainer_s` / `report_s` (seconds in the loop and in
`report`), so it can measure per-trial overhead. A `UserInputError` from the trainer (a bad
value, a malformed dataset) ends the trial with one `user_error` report instead of an
exception: retrying cannot fix it. A trial of a resumed sweep starts from `resume_from`, the
checkpoint the driver found for it. This module never imports `platform` (it runs on workers)
and imports Ray lazily.
"""

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from trainables.checkpoint import persist, save_checkpoint
from trainables.errors import UserInputError
from trainables.methods import load_entry, make_trial_config

USER_ERROR = "user_error"   # a report with this key: the trial failed on bad input (no retry)
REPORTS_FILE = "reports.json"  # in a checkpoint folder: the trial's reports up to the one that saved it
RESENT = "resent"  # a report re-sent by a resumed trial from its checkpoint's history (see _Reporter)
WEIGHTS_FILE = "weights.pt"  # in a final checkpoint folder: weights_only(checkpoint)
WEIGHT_KEYS = ("nets", "G_ema")  # the detector's networks, DFMGAN's generator (its EMA, as evaluated)
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # ray/train/v2/_internal/constants.py

def trial_config(method: str, config: dict, *, name: str, group: str = "", params: dict | None = None,
                 workers: int = 1, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 train_storage: str | None = None, max_failures: int = 1, controller_failure_limit: int = 1,
                 worker_start_timeout_s: float = 600.0, prune_checkpoints: bool = False) -> dict:
    """The Tune config of one trial: the trainer's whole flat `config` as the driver built it,
    the trial's identity and labels (`params`, for MLflow), and how to run it; plain JSON-able values.
    `prune_checkpoints`: a one-worker trial deletes its previous Tune checkpoint once it has
    reported a newer one (where Tune is told to keep them all, platform/tuner.py run_phase)."""
    assert workers >= 1 and max_failures >= 0 and controller_failure_limit >= 0
    return {"method": method, "config": dict(config), "name": name, "group": group, "params": dict(params or {}),
            "workers": workers, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
            "train_storage": train_storage, "max_failures": max_failures,
            "controller_failure_limit": controller_failure_limit, "worker_start_timeout_s": worker_start_timeout_s,
            "prune_checkpoints": prune_checkpoints}


def worker_config(trial: dict, sampled: dict, **runtime):
    """The trainer's config on the worker: the driver's flat dict plus only the sampled values
    (HPO) and `runtime` fields (the resume pointer, a DDP rank's device)."""
    flat = {**trial["config"], **sampled, **runtime}
    return make_trial_config(trial["method"], flat["preset"], flat)


def run_trial(config: dict) -> None:
    """The Tune function trainable: `config["trial"]` from `trial_config`, plus sampled values
    under `config["search"]` (HPO) that override the trainer's fields."""
    _quiet_checkpoint_logs()
    trial = config["trial"]
    if trial["workers"] == 1:
        _run_direct(trial, config.get("search") or {})
    else:
        _run_nested(trial, config.get("search") or {})


# ---------------------------------------------------------------- one worker: directly in the trial

def _run_direct(trial: dict, sampled: dict) -> None:
    from ray import tune

    entry = load_entry(trial["method"])

    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        with reporter.stamp(metrics) as stamped:
            if checkpoint is None:
                tune.report(stamped)
                return
            previous = tune.get_checkpoint()  # this trial's newest in storage (Tune's own, never `resume_from`)
            with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:
                _persist(checkpoint, folder, reporter.history)
                tune.report(stamped, checkpoint=tune.Checkpoint.from_directory(folder))
            # report returns once the driver has taken the result, so Tune restarts this trial
            # from the new checkpoint from now on: the previous one is no longer needed
            if trial.get("prune_checkpoints") and previous is not None:
                previous.filesystem.delete_dir(previous.path)

    restarted = tune.get_checkpoint()  # Tune restarting this trial: its driver logged the checkpoint's report
    with _resume_folder(restarted, trial) as resume, _local_inputs(trial) as trial:
        reporter = _Reporter(resume, None if restarted else trial.get("logged_through"))
        for resent in reporter.unlogged():
            tune.report(resent)
        try:
            cfg = worker_config(trial, sampled, resume=resume)
            entry(cfg, report)
        except UserInputError as error:
            # a bad value or dataset fails the same way on every attempt: end the trial now, with
            # its message, instead of raising into Tune's retries (the driver marks it FAILED)
            tune.report({USER_ERROR: str(error)})


# ---------------------------------------------------------------- several workers: a nested TorchTrainer

def _run_nested(trial: dict, sampled: dict) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    assert trial["train_storage"], "a multi-worker trial needs the sweep's shared storage"
    # Train V2's default start window (60 s) is shorter than a cold GPU node's boot, and the
    # autoscaler sees the workers' demand only while the controller waits. The controller is an
    # actor of its own; Train copies this variable to it from the process calling fit().
    os.environ[WORKER_START_TIMEOUT_ENV] = str(trial.get("worker_start_timeout_s", 600.0))
    gpus = trial["gpus_per_worker"]
    resources = {"CPU": trial["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trial": trial, "sampled": sampled},
        scaling_config=ray.train.ScalingConfig(num_workers=trial["workers"], use_gpu=gpus > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # stable across trial restarts and sweep resumes (a trial keeps its name): Train resumes
            # its own run from its latest checkpoint
            name=f"train-{tune.get_context().get_trial_name()}",
            storage_path=trial["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=trial["max_failures"],
                                                   controller_failure_limit=trial["controller_failure_limit"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),  # resume needs the newest only
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _train_worker(loop_config: dict) -> None:
    """Per-worker loop of the nested path (every rank calls report; rank 0 checkpoints)."""
    import ray.train
    import ray.train.torch

    _quiet_checkpoint_logs()
    trial, sampled = loop_config["trial"], loop_config["sampled"]
    entry = load_entry(trial["method"])
    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        with reporter.stamp(metrics) as stamped:
            if checkpoint is None or rank != 0:
                ray.train.report(stamped)
                return
            with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:
                _persist(checkpoint, folder, reporter.history)
                ray.train.report(stamped, checkpoint=ray.train.Checkpoint.from_directory(folder))

    device = ray.train.torch.get_device()  # this rank's GPU, or cpu
    # a restart of this Train run, or of the trial, cannot be told from the resumed sweep's first
    # attempt here: re-send what the driver had not logged when this attempt of the sweep began
    with _resume_folder(ray.train.get_checkpoint(), trial) as resume, _local_inputs(trial) as trial:
        reporter = _Reporter(resume, trial.get("logged_through"))
        for resent in reporter.unlogged():
            ray.train.report(resent)  # every rank, like every report
        try:
            cfg = worker_config(trial, sampled, resume=resume, device=str(device))
            entry(cfg, report)
        except UserInputError as error:
            ray.train.report({USER_ERROR: str(error)})  # every rank fails alike: no retry (see _run_direct)


# ---------------------------------------------------------------- shared pieces

def _quiet_checkpoint_logs() -> None:
    """Ray logs INFO lines per report and per persisted checkpoint on every worker, forwarded
    to the sweep's console: a flood of one line per epoch and rank on a 300-trial sweep."""
    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage",
                 "ray.train.v2._internal.execution.context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _persist(checkpoint: dict, folder: str, reports: list[dict]) -> None:
    persist(checkpoint, folder)
    (Path(folder) / REPORTS_FILE).write_text(json.dumps(reports, default=str))
    weights = weights_only(checkpoint) if checkpoint.get("final") else None
    if weights:  # what MLflow keeps of a finished trial unless asked for the full checkpoint
        save_checkpoint(folder, weights, WEIGHTS_FILE)


def weights_only(checkpoint: dict) -> dict:
    """The networks a user loads to evaluate or generate, without optimiser or RNG state: the
    detector's `nets` (R, D, F), DFMGAN's `G_ema`; with the config that built them. A third of
    the paper detector's checkpoint (trainables/sizes.py). Empty for a checkpoint without any."""
    nets = {key: checkpoint[key] for key in WEIGHT_KEYS if key in checkpoint}
    return {**nets, "config": checkpoint.get("config", {})} if nets else {}


@contextlib.contextmanager
def _resume_folder(checkpoint, trial: dict):
    """The folder to resume from: Ray's checkpoint of this trial when it restarts, else the
    checkpoint the driver found for it when the sweep resumes (`resume_from`), else None."""
    if checkpoint is None and trial.get("resume_from"):
        from ray.train import Checkpoint

        checkpoint = Checkpoint(trial["resume_from"])
    with _as_directory(checkpoint) as folder:
        yield folder


@contextlib.contextmanager
def _as_directory(checkpoint):
    """A local folder holding a Ray checkpoint for the whole block (None without one)."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield str(folder)


@contextlib.contextmanager
def _local_inputs(trial: dict):
    """`trial` with every checkpoint URI in its config (an earlier trial's output in cloud storage,
    e.g. a GAN stage-1 checkpoint `s3://...`) replaced by a local copy for the block's duration."""
    config = trial["config"]
    remote = {k: v for k, v in config.items() if isinstance(v, str) and "://" in v and k != "data"}
    if not remote:
        yield trial
        return
    import pyarrow.fs

    with tempfile.TemporaryDirectory(prefix="inputs-") as folder:
        local = dict(config)
        for key, uri in remote.items():
            filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
            pyarrow.fs.copy_files(path, f"{folder}/{key}", source_filesystem=filesystem,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
            local[key] = f"{folder}/{key}"
        yield {**trial, "config": local}


class _Reporter:
    """Stamps every report with `report_index` (1, 2, ... over the trial's whole life: it
    continues from the checkpoint a restarted trial resumes, so the driver logs each index once
    and a replayed report is recognisable) and with `trainer_s` (seconds in the loop, excluding
    the time inside `report`) and `report_s` (time persisting reports); keeps them all (`history`).

    A checkpoint folder keeps the history up to the report that saved it (`reports.json`, a few
    numbers per report). A checkpoint reaches storage before its report reaches the driver, so a
    driver killed while the trial ran may not have logged the last reports before the newest
    checkpoint. A trial resuming from it re-sends them first (`unlogged`): those after
    `logged_through`, the step the driver had logged when the sweep resumed, or only the
    checkpoint's own report when that is unknown (a copy the driver already logged is dropped).
    So no step is missing from a resumed trial's history."""

    def __init__(self, resume: str | None, logged_through: int | None = None):
        self.start = time.perf_counter()
        self.report_s = 0.0
        self.history: list[dict] = []
        saved = Path(resume) / REPORTS_FILE if resume else None
        if saved is not None and saved.exists():
            self.history = json.loads(saved.read_text())
        self.index = self.history[-1]["report_index"] if self.history else 0
        self.logged_through = self.index - 1 if logged_through is None else logged_through

    def unlogged(self) -> list[dict]:
        """The saved reports the driver may not have logged, marked `resent`."""
        return [{**report, RESENT: True} for report in self.history if report["report_index"] > self.logged_through]

    @contextlib.contextmanager
    def stamp(self, metrics: dict[str, Any]):
        """Yields `metrics` stamped as above (and kept in `history`); times the block."""
        began = time.perf_counter()
        self.index += 1
        stamped = {**metrics, "report_index": self.index, "trainer_s": round(began - self.start - self.report_s, 3),
                   "report_s": round(self.report_s, 3)}
        self.history.append({k: v for k, v in stamped.items() if not isinstance(v, dict)})
        try:
            yield stamped
        finally:
            self.report_s += time.perf_counter() - began

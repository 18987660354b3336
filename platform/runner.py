"""Running a planned sweep: Ray, the MLflow parent run, the phases in order, the tables.

`Sweep` is a validated plan (search_spaces/) plus where and how it runs. `run(sweep)` connects
to Ray, checks that the trials' dataset is readable where they will run, opens (or reopens) the
sweep's MLflow parent run, runs each phase as one Tune experiment with every trial's flat
config as the plan built it (an earlier phase's checkpoint is filled into the trials that
start from it; those whose upstream trial failed are skipped), builds the tables from the plan
and the runs, and returns an `Outcome`. Progress lines come from the tracking callback; the
summary is the CLI's to print (platform/sweep.py).
"""

import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path

from platform import cost, storage
from platform.resources import Resources, autoscaler_ceiling, fmt, size_for_cluster
from search_spaces.base import SweepPlan, TrialSpec, dataset_info
from trainables.errors import UserInputError
from trainables.ray_adapter import USER_ERROR

# config fields that never change a trainer's networks (checkpoint sizes are counted once per rest)
_NOT_ARCHITECTURE = {"category", "seed", "data", "resume", "stage1", "defect", "lambda_ms", "partition",
                     "anomaly_source", "dtd_root", "minutes", "epochs", "stage1_minutes", "stage2_minutes",
                     "stage1_kimg", "stage2_kimg", "lr", "device", "checkpoint_minutes", "report_every"}
# config fields the tables lay out (ablation switches, DFMGAN's defect and λ, the partition)
SWITCHES = ("anomaly_source", "df", "lk", "df_update", "dtd_root", "defect", "lambda_ms", "partition")


@dataclasses.dataclass
class Sweep:
    plan: SweepPlan
    build_options: dict         # the builder's arguments: enough to rebuild the plan on --resume
    sweep_id: str
    resources: Resources
    storage: str
    tracking_uri: str
    experiment: str
    retries: int = 3            # Tune relaunches a crashed or preempted trial this often
    tracking_outage_s: float = 600.0   # how long MLflow may be unreachable before the sweep fails
    cluster_max: dict | None = None    # what the cluster can grow to ({"CPU": n, "GPU": m}), given by flags
    worker_start_timeout_s: float = 600.0   # a nested trial's wait for its Train workers (cold GPU nodes)
    log_full_checkpoint: bool = False  # MLflow keeps the full last checkpoint (optimiser state too), not weights

    def record(self) -> dict:
        """What `--resume` and `report` read back: the options, resources and where things are."""
        return {"sweep_id": self.sweep_id, "kind": self.plan.kind, "build": self.build_options,
                "resources": dataclasses.asdict(self.resources), "storage": self.storage,
                "tracking_uri": self.tracking_uri, "experiment": self.experiment, "dataset": self.plan.dataset,
                "preset": self.plan.preset, "n_trials": self.plan.n_runs}

    def planned(self) -> list[dict]:
        """The plan's trials as the tables need them (a sampled phase: its template and count)."""
        return [{"name": t.name, "method": t.method, "phase": phase.name, "category": t.category,
                 "group": t.group, "seed": t.seed, "params": dict(t.params), "needs": t.needs,
                 "switches": {k: t.config.get(k, t.params.get(k)) for k in SWITCHES if k in t.config or k in t.params},
                 "samples": phase.search.num_samples if phase.search else 1}
                for phase in self.plan.phases for t in phase.trials]

    def estimates(self) -> dict[str, float]:
        """Expected seconds of each trial's trainer (platform/cost.py; Ray's overhead not included)."""
        info = dataset_info(self.plan.data)
        return {t.name: cost.trial_seconds(t.cfg, cost.Trial(t.method, info.n_train(t.category),
                                                             len(info.defect_types(t.category))),
                                           self.plan.preset, self.device, self.resources.workers)
                for t in self.plan.trials}

    def checkpoint_bytes(self) -> dict[str, cost.CheckpointBytes]:
        """Each trial's checkpoint bytes (storage and MLflow), from its preset's state-dict sizes
        counted on the meta device and its expected duration (the same as `estimates`)."""
        from trainables.config import to_flat
        from trainables.sizes import checkpoint_size

        sizes, out = {}, {}
        estimates = self.estimates()
        for t in self.plan.trials:
            # trials that differ only in data, category, seed or defect share an architecture
            key = (t.method, tuple(sorted((k, str(v)) for k, v in to_flat(t.cfg).items() if k not in _NOT_ARCHITECTURE)))
            if key not in sizes:
                sizes[key] = checkpoint_size(t.method, t.cfg)
            size = sizes[key]
            out[t.name] = cost.checkpoint_bytes(t.cfg, t.method, estimates[t.name], size.full, size.weights,
                                                self.log_full_checkpoint)
        return out

    @property
    def device(self) -> str:
        return "gpu" if self.resources.gpus_per_trial else "cpu"


@dataclasses.dataclass
class Outcome:
    parent_run_id: str
    tables: list
    finished: int               # trainer runs that finished
    failed: int                 # failed or skipped
    wall_s: float
    timing: dict                # overhead figures (overhead_summary)
    interrupted: int | None = None   # the signal that stopped the sweep
    unfinished: list = dataclasses.field(default_factory=list)   # planned trials not finished


class Signals:
    """SIGINT and SIGTERM (Ctrl-C, `kill`, `ray job stop`) stop a sweep cleanly: the first one
    asks Tune to end its loop (Tune's own SIGUSR1 handler; its SIGINT handler is turned off, since
    it would count the interruption as the end of the sweep), a second one stops at once. Either
    way the runner ends every open run KILLED and returns which trials are unfinished.
    Once stopped, Tune's own warnings about it are dropped: they tell the user to resume with
    `Tuner.restore(...)` and list the trials that have no results yet, where the sweep prints
    its `--resume` command and its unfinished trials."""

    TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")

    def __init__(self):
        self.signum: int | None = None
        self.in_fit = False
        self._previous = {}

    def __enter__(self):
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        for name in self.TUNE_LOGGERS:
            logging.getLogger(name).addFilter(self._before_stop)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        for name in self.TUNE_LOGGERS:
            logging.getLogger(name).removeFilter(self._before_stop)

    def _before_stop(self, record: logging.LogRecord) -> bool:
        return self.signum is None or record.levelno >= logging.ERROR

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping the sweep (trials keep their last checkpoint); "
                  f"send it again to stop at once", flush=True)
            if self.in_fit:
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune ends its loop and saves its state
                return
        raise KeyboardInterrupt


def run(sweep: Sweep) -> Outcome:
    import ray

    from platform import tables, tracking, tuner, ui_view
    from platform.writer import Writer
    from trainables.data import resolve_data
    from trainables.detector.train import required_weights

    for where in storage.in_job_dir(sweep.storage, sweep.tracking_uri):
        print(f"warning: {where} is inside this job's temporary working dir; pass --storage / --tracking-uri "
              f"(or MLFLOW_TRACKING_URI) to keep results")
    resolve_data(sweep.plan.data)  # generate the embedded set once here, not in N trials at once
    started_ray, where = tuner.connect_ray()
    print(where)
    signals = Signals()
    with signals:  # after Ray: ray.init installs a SIGTERM handler of its own (it aborts the driver)
        parent, writer, began = None, None, time.monotonic()
        try:
            on_cluster = bool(os.environ.get("RAY_ADDRESS")) or not started_ray
            now = ray.cluster_resources()
            ceiling = (sweep.cluster_max or autoscaler_ceiling()) if on_cluster else None
            sizing = size_for_cluster(sweep.resources, now, on_cluster, ceiling)
            for note in sizing.notes:
                print(f"note: {note}")
            grows = f", up to {fmt(ceiling)} with the autoscaler" if ceiling else ""
            print(f"concurrency: {sizing.concurrent} trials at once ({fmt(sizing.resources.need())} each; "
                  f"cluster {fmt(now)} now{grows})")
            weights = sorted({(name, t.cfg.weights_dir) for t in sweep.plan.trials if t.method == "detector"
                              for name in required_weights(t.cfg)}, key=str)
            if sweep.plan.data != "embedded" or weights:
                check_nodes(sweep.plan.data, [t.category for t in sweep.plan.trials], weights)
            storage.write_record(sweep.storage, sweep.sweep_id, sweep.record())
            experiment = tracking.experiment_id(sweep.tracking_uri, sweep.experiment)  # the store, once, before trials
            parent = tracking.open_parent(sweep.tracking_uri, sweep.experiment, sweep.sweep_id,
                                          _parent_params(sweep), sweep.record(), sweep.planned())
            labels = {key for t in sweep.plan.trials for key in (*t.params, *t.overrides)}
            ui_view.share(tracking.client(sweep.tracking_uri), experiment, sweep.sweep_id, sweep.plan.kind, parent,
                          sorted(labels))
            print(f"MLflow parent run {parent} in {sweep.tracking_uri} (experiment {sweep.experiment})")
            writer = Writer(sweep.tracking_uri, sweep.tracking_outage_s)
            began = time.monotonic()
            failed, slot_seconds = _run_phases(sweep, sizing.resources, sizing.concurrent, parent, writer, signals,
                                               demand=on_cluster)
            wall = time.monotonic() - began
        except KeyboardInterrupt:
            signals.signum = signals.signum or signal.SIGINT
            wall = time.monotonic() - began if parent else 0.0
            failed, slot_seconds = 0, 0.0
        except tracking.TrackingOutage as outage:
            raise SweepFailed(f"{outage}; the trials' checkpoints are in {sweep.storage}; rerun the same "
                              f"command when the store is back") from None
        finally:
            if writer is not None and not writer.flush(timeout=sweep.tracking_outage_s + 30):
                print(f"error: {writer.failed or 'MLflow writes did not finish'}", file=sys.stderr)
            if started_ray:
                ray.shutdown()
        done = storage.read_done(storage.join(sweep.storage, sweep.sweep_id))
        unfinished = [t.name for t in sweep.plan.trials if t.name not in done]
        if signals.signum is not None:
            if parent is not None:
                tracking.end_running_children(sweep.tracking_uri, parent, "KILLED")
                tracking.close_parent(sweep.tracking_uri, parent, "KILLED", {"sweep_wall_s": round(wall, 1)})
            return Outcome(parent or "", [], len(done), 0, wall, {}, signals.signum, unfinished)
        local = storage.local_path(sweep.storage)
        built = tables.build_and_log(sweep.tracking_uri, parent,
                                     out_dir=Path(local) / sweep.sweep_id / "tables" if local else None)
        timing = overhead_summary(sweep.tracking_uri, parent, slot_seconds)
        tracking.end_running_children(sweep.tracking_uri, parent, "FAILED")  # none, unless a writer gave up
        tracking.close_parent(sweep.tracking_uri, parent, "FAILED" if failed else "FINISHED",
                              {"sweep_wall_s": round(wall, 1), "failed_trials": failed, **timing})
    return Outcome(parent, built, sweep.plan.n_runs - failed, failed, wall, timing, None, unfinished)


class SweepFailed(RuntimeError):
    """The sweep cannot go on (the tracking store stayed away); the message says what to do."""


def check_nodes(data: str, categories: list[str], weights: list[tuple[str, str | None]]) -> None:
    """UserInputError, before any trial starts, when a node that can run trials cannot read the
    dataset folder (a path that exists only on the driver's machine), or lacks pretrained weights
    that trials cannot train without (`weights`: (name, weights_dir) pairs, from the trainers'
    `required_weights`). Nodes the autoscaler adds later are checked by the trainers themselves
    (their errors name the path, or the file and how to provision it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def problem(path: str, names: list[str], weights: list[tuple[str, str | None]]) -> tuple[str, str] | None:
        from trainables.errors import WeightsUnavailable
        from trainables.weights import resolve_weights

        if path != "embedded":
            root = Path(path)
            absent = [str(root / name) for name in names if not (root / name / "train").is_dir()] \
                if root.is_dir() else [path]
            if absent:
                return "data", absent[0]
        for name, weights_dir in weights:
            try:
                resolve_weights(name, weights_dir)
            except WeightsUnavailable as error:
                return "weights", str(error)
        return None

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    checks = {n["NodeManagerAddress"]: problem.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(data, sorted(set(categories)), weights) for n in nodes}
    for address, ref in checks.items():
        found = ray.get(ref, timeout=120)
        if found and found[0] == "data":
            raise UserInputError(f"--data {data}: the node at {address} cannot read {found[1]}; expected the "
                                 f"dataset at the same absolute path on every node (a shared filesystem)")
        if found:
            raise UserInputError(f"the node at {address}: {found[1]}")


def _parent_params(sweep: Sweep) -> dict:
    options = {k: v for k, v in sweep.plan.options.items() if v not in (None, {}, [])}
    return {"kind": sweep.plan.kind, "preset": sweep.plan.preset, "data": sweep.plan.data,
            "dataset": sweep.plan.dataset, **options, "n_trials": sweep.plan.n_runs,
            "workers_per_trial": sweep.resources.workers, "gpus_per_trial": sweep.resources.gpus_per_trial,
            "storage": sweep.storage}


def _run_phases(sweep: Sweep, resources: Resources, concurrent: int, parent: str, writer, signals: Signals,
                demand: bool = False) -> tuple[int, float]:
    """Run every phase; returns (failed or skipped trials, trial-slot seconds = slots x phase wall
    time). A trial that finished in an earlier run of this sweep is not run again; one that did
    not starts from its newest checkpoint; a GAN trial another sweep in this storage finished with
    the same config takes that checkpoint (platform/reuse.py). After an interruption no later
    phase starts."""
    from platform import reuse, tracking, tuner

    provenance = {"dataset": sweep.plan.dataset, **tracking.provenance()}
    sweep_storage = storage.join(sweep.storage, sweep.sweep_id)
    failed, slot_seconds = 0, 0.0
    shared = reuse.fingerprints(sweep.plan.trials)  # GAN checkpoints other sweeps may have finished
    for phase in sweep.plan.phases:
        done = storage.read_done(sweep_storage)
        if phase.search is None:
            before = len(phase.trials)
            trials = [t for t in phase.trials if t.name not in done]
            if len(trials) < before:
                print(f"phase {phase.name}: {before - len(trials)} of {before} trials already finished")
        else:
            trials = list(phase.trials)
        ready = [with_dependency(t, done) for t in trials]
        runnable = [t for t in ready if t is not None]
        for spec in (s for s, t in zip(trials, ready) if t is None):
            reason = f"needs {', '.join(missing_dependencies(spec, done))}, which did not finish"
            print(f"phase {phase.name}: {spec.name} skipped ({reason})")
            tracking.log_untrained(sweep.tracking_uri, parent, provenance, spec, "KILLED", {"skipped": reason})
            failed += 1
        runnable = _take_finished(sweep, parent, provenance, runnable, shared, sweep_storage)
        if not runnable:
            continue
        resume = {t.name: storage.latest_checkpoint(sweep_storage, phase.name, t.name) for t in runnable}
        logged = tracking.logged_steps(sweep.tracking_uri, parent, {name for name, at in resume.items() if at})
        total = phase.search.num_samples if phase.search else len(runnable)
        callback = tracking.MLflowTrialCallback(sweep.tracking_uri, parent, provenance, sweep.storage, total,
                                                writer, sweep_storage, sweep.log_full_checkpoint)
        began = time.monotonic()
        signals.in_fit = True
        try:
            results = tuner.run_phase(sweep_storage, phase, runnable, resources, concurrent, callback, resume,
                                      logged, sweep.retries, sweep.worker_start_timeout_s, demand)
        finally:
            signals.in_fit = False
        slot_seconds += min(concurrent, len(results)) * (time.monotonic() - began)
        if signals.signum is not None:
            return failed, slot_seconds
        done = storage.read_done(sweep_storage)
        for result in results:
            name = result.config["trial"]["name"]
            if result.error is not None or USER_ERROR in (result.metrics or {}):
                failed += 1
            elif name in shared and done.get(name):
                reuse.record(sweep.storage, shared[name], done[name], name, sweep.sweep_id, result.metrics)
    return failed, slot_seconds


def _take_finished(sweep: Sweep, parent: str, provenance: dict, trials: list, shared: dict,
                   sweep_storage: str) -> list:
    """The trials still to run: a GAN trial whose finished checkpoint an earlier sweep in this
    storage recorded (same config, same upstream checkpoints) takes it and is logged as reused."""
    from platform import reuse, tracking

    left = []
    for trial in trials:
        found = reuse.lookup(sweep.storage, shared[trial.name]) if trial.name in shared else None
        if found is None:
            left.append(trial)
            continue
        storage.write_done(sweep_storage, trial.name, found["path"])
        if found["sweep_id"] == sweep.sweep_id:
            continue  # this sweep finished it before (a rerun): its child run is there already
        print(f"{trial.name}: reusing the finished checkpoint {found['path']} (sweep {found['sweep_id']})")
        tracking.log_untrained(sweep.tracking_uri, parent, provenance, trial, "FINISHED",
                               {"reused_from": found["path"], "reused_sweep": found["sweep_id"]}, found["metrics"])
    return left


def with_dependency(trial: TrialSpec, checkpoints: dict[str, str | None]) -> TrialSpec | None:
    """The trial with its earlier trials' checkpoints filled into its config (None if one of them
    did not finish): one folder into a str field, all of them in `needs` order into a tuple field (a
    detector's dfmgan_banks). Only the pointers change: the config was built and validated with the plan."""
    if not trial.needs:
        return trial
    if not all(checkpoints.get(name) for name in trial.needs):
        return None
    paths = tuple(checkpoints[name] for name in trial.needs)
    many = isinstance(getattr(trial.cfg, trial.needs_key), tuple)
    assert many or len(paths) == 1, f"{trial.name}: {trial.needs_key} takes one folder, needs {trial.needs}"
    return dataclasses.replace(trial, cfg=dataclasses.replace(trial.cfg, **{trial.needs_key: paths if many else paths[0]}))


def missing_dependencies(trial: TrialSpec, checkpoints: dict[str, str | None]) -> list[str]:
    """The names of the trials a skipped trial needed that did not finish."""
    return [name for name in trial.needs if not checkpoints.get(name)]


def overhead_summary(tracking_uri: str, parent: str, slot_seconds: float) -> dict[str, float]:
    """Per-trial overhead figures from the children's timings (see the tracking callback)."""
    from platform import tracking

    runs = [r for r in tracking.children(tracking_uri, parent) if "trainer_s" in r.data.metrics]
    if not runs:
        return {}
    trainer = [r.data.metrics["trainer_s"] for r in runs]
    inside = [r.data.metrics["overhead_s"] for r in runs if "overhead_s" in r.data.metrics]
    out = {"trainer_s_mean": round(sum(trainer) / len(trainer), 3), "trainer_s_total": round(sum(trainer), 3)}
    if inside:
        out["overhead_s_mean"] = round(sum(inside) / len(inside), 3)
    if slot_seconds:
        out["overhead_amortized_s"] = round(max(0.0, slot_seconds - sum(trainer)) / len(runs), 3)
    return out


"""`python -m platform.sweep {ablation,gan,classify,hpo,report}`: Ray Tune sweeps tracked in MLflow.

Expands a search space (search_spaces/) into trials, runs each trial's trainer through the
Ray adapter (trainables/ray_adapter.py) on a local Ray runtime or the cluster at
$RAY_ADDRESS, records one MLflow parent run per sweep and a child per trial
(platform/tracking.py), and ends with the result tables (platform/tables.py) and how to open
the MLflow UI. `report SWEEP_ID` rebuilds the tables from MLflow alone.

Order of events, so bad input costs nothing: the plan is built and validated (UserInputError:
one line, exit 2, no Ray, no MLflow run), `--dry-run` prints the trials, their resources and
an estimated cost and stops there; only then are Ray and the parent run started. The sweep
id is a hash of the sweep's options, so running the same command again, or `--resume ID`,
continues the same sweep (Tuner.restore, same parent run) instead of starting a new one.
Resources are sized so trial drivers plus Train workers fit the cluster (a multi-worker trial
whose workers cannot start would otherwise retry forever, specs/platform.md §2.4), and every
failure limit is finite.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import search_spaces
from platform import cost
from platform.cli import run_main
from search_spaces.base import SweepPlan, TrialSpec, dataset_info, trainer_config
from trainables.config import parse_overrides, to_flat
from trainables.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = REPO / "runs" / "sweeps"
DRIVER_CPU = 0.1            # a nested trial's driver only waits on its TorchTrainer
DRIVER_SHARE = 0.01         # of --driver-resource per driver (cluster configs advertise 16 per node)
TRIAL_RETRIES = 1           # Tune relaunches a failed trial once (from its last checkpoint)
TRAIN_RETRIES = 1           # Train restarts a failed worker group once; its controller too
CHECKPOINTS_KEPT = 2


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m platform.sweep", description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    specs = {
        "ablation": "the detector's ablation grid (paper Table 4) x categories x seeds",
        "gan": "DFMGAN stage 2 over categories x defect types x lambda (one stage 1 per category)",
        "classify": "DFMGAN's downstream classification protocol per category x partition",
        "hpo": "Optuna search (with ASHA) over the detector's lr and loss weights, one study per category",
    }
    for kind, help_text in specs.items():
        sub = kinds.add_parser(kind, help=help_text)
        _common(sub)
        if kind == "ablation":
            sub.add_argument("--grid", default="paper-rows", choices=("paper-rows", "factorial"))
            sub.add_argument("--rows", type=int, nargs="+", help="only these Table 4 rows (2-8; paper-rows grid)")
        if kind == "gan":
            sub.add_argument("--defects", nargs="+", help="defect types (default: every type of each category)")
            sub.add_argument("--lambdas", type=float, nargs="+", help="mode-seeking weights (default 0 .05 .1 .2 .5)")
        if kind == "classify":
            sub.add_argument("--partitions", type=int, default=3, help="random 1/3-2/3 partitions per category")
        if kind == "hpo":
            sub.add_argument("--samples", type=int, default=8, help="Optuna trials per category")
            sub.add_argument("--row", type=int, default=7, help="Table 4 row used as the template (default: full)")
    report = kinds.add_parser("report", help="rebuild a sweep's tables from MLflow alone")
    report.add_argument("sweep_id")
    report.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite mlflow.db)")
    report.add_argument("--out", help="also write the tables (Markdown, CSV) to this folder")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="embedded", help="'embedded' or a folder in the MVTec AD layout")
    parser.add_argument("--categories", nargs="+", help="categories to sweep (default: all of the dataset's)")
    parser.add_argument("--preset", default="small", help="trainer preset: tiny (tests), small (CPU laptop), paper")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (0..N-1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one trainer config field in every trial; repeatable")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="Train workers per trial; 1 runs the loop in the Tune trial itself")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial; fractions pack several 1-worker trials on a GPU")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    parser.add_argument("--driver-resource", metavar="NAME",
                        help="custom Ray resource the drivers of multi-worker trials ask for, to keep them on "
                             "on-demand nodes (cluster/ configs advertise 'trial_driver')")
    parser.add_argument("--storage", help=f"trial storage, a shared path or URI on clusters (default: {DEFAULT_STORAGE})")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite mlflow.db "
                                               "in the repo)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: defect-sweeps)")
    parser.add_argument("--resume", metavar="SWEEP_ID", help="continue this sweep (its saved options win)")
    parser.add_argument("--dry-run", action="store_true", help="print trials, resources and cost; start nothing")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "report":
        return report(args.sweep_id, args.tracking_uri, args.out)
    sweep = Sweep.from_args(args)
    sweep.describe(list_trials=args.dry_run)
    if args.dry_run:
        return 0
    return sweep.run()


# ---------------------------------------------------------------- the sweep

@dataclasses.dataclass
class Resources:
    workers: int                # Train workers per trial (1 = the loop runs in the Tune trial)
    gpus_per_trial: float
    cpus_per_worker: float
    max_concurrent: int | None  # None = as many as the cluster schedules
    driver_resource: str | None = None  # custom resource that keeps nested trial drivers on safe nodes

    def __post_init__(self):
        if self.workers < 1:
            raise UserInputError(f"--workers-per-trial {self.workers}: expected at least 1")
        if self.gpus_per_trial < 0 or self.cpus_per_worker <= 0:
            raise UserInputError("--gpus-per-trial and --cpus-per-worker: expected non-negative / positive numbers")
        per_worker = self.gpus_per_worker
        if self.workers > 1 and per_worker and not float(per_worker).is_integer():
            # two ranks of one NCCL group on one GPU crash ("Duplicate GPU detected", ray #48012)
            raise UserInputError(f"--gpus-per-trial {self.gpus_per_trial} with --workers-per-trial "
                                 f"{self.workers}: {per_worker:g} GPU per worker; fractional GPUs only "
                                 f"work with 1 worker per trial")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserInputError(f"--max-concurrent {self.max_concurrent}: expected at least 1")

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_trial / self.workers

    @property
    def nested(self) -> bool:
        return self.workers > 1

    def trial_bundle(self) -> dict[str, float]:
        """What the Tune trial itself reserves."""
        if self.nested:
            # drivers on "safe" (on-demand) nodes via a custom resource they advertise (§2.3)
            return {"CPU": DRIVER_CPU, **({self.driver_resource: DRIVER_SHARE} if self.driver_resource else {})}
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_trial} if self.gpus_per_trial else {})}

    def need(self) -> dict[str, float]:
        """Everything one running trial holds: its driver plus (nested) its workers."""
        if not self.nested:
            return self.trial_bundle()
        return {**self.trial_bundle(), "CPU": DRIVER_CPU + self.workers * self.cpus_per_worker,
                **({"GPU": self.gpus_per_trial} if self.gpus_per_trial else {})}

    def fits(self, available: dict[str, float]) -> int:
        """Trials that fit at once in `available` (drivers and workers together)."""
        return min(math.floor(available.get(key, 0.0) / amount + 1e-9) for key, amount in self.need().items())

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_trial else ""
        if self.nested:
            placed = f" on a node with '{self.driver_resource}'" if self.driver_resource else ""
            return (f"{self.workers} Train workers x ({self.cpus_per_worker:g} CPU{gpu}) + a {DRIVER_CPU:g}-CPU "
                    f"trial driver{placed} (nested TorchTrainer, DDP)")
        return f"1 worker ({self.cpus_per_worker:g} CPU{gpu}), the loop runs in the Tune trial itself"


@dataclasses.dataclass
class Sweep:
    plan: SweepPlan
    build_options: dict         # the builder's arguments: enough to rebuild the plan on --resume
    sweep_id: str
    resources: Resources
    storage: str
    tracking_uri: str
    experiment: str

    @classmethod
    def from_args(cls, args) -> "Sweep":
        from platform import tracking

        if args.resume:
            record = read_record(args.storage or str(DEFAULT_STORAGE), args.resume, args.tracking_uri)
            kind, build_options = record["kind"], record["build"]
            resources = Resources(**record["resources"])
            if args.max_concurrent:
                resources.max_concurrent = args.max_concurrent
            storage, experiment = record["storage"], record["experiment"]
            tracking_uri = args.tracking_uri or record["tracking_uri"]
        else:
            kind = args.kind
            build_options = _build_options(args)
            resources = Resources(args.workers_per_trial, args.gpus_per_trial, args.cpus_per_worker,
                                  args.max_concurrent, args.driver_resource)
            storage = _absolute(args.storage or str(DEFAULT_STORAGE))
            tracking_uri = args.tracking_uri or tracking.default_tracking_uri(REPO)
            experiment = args.experiment or tracking.DEFAULT_EXPERIMENT
        plan = search_spaces.build(kind, **build_options)
        sweep_id = make_sweep_id(plan, resources.workers)
        if args.resume and sweep_id != args.resume:
            raise UserInputError(f"--resume {args.resume}: its saved options now give sweep {sweep_id}; "
                                 f"the search space changed since it ran")
        return cls(plan, build_options, sweep_id, resources, storage, tracking_uri, experiment)

    # ------------------------------------------------------------ planning

    def describe(self, list_trials: bool) -> None:
        plan = self.plan
        phases = "" if len(plan.phases) == 1 else " (" + ", ".join(
            f"{p.name}: {p.search.num_samples if p.search else len(p.trials)}" for p in plan.phases) + ")"
        print(f"sweep {self.sweep_id}: {plan.n_runs} trials{phases}; preset {plan.preset}; "
              f"dataset {plan.dataset} ({plan.data})")
        for note in plan.notes:
            print(f"note: {note}")
        print(f"resources per trial: {self.resources.describe()}")
        if self.resources.driver_resource and not self.resources.nested:
            print(f"note: --driver-resource {self.resources.driver_resource} is unused: a 1-worker trial "
                  f"runs its loop in the trial itself, on a worker node")
        estimates = self.estimates()
        if list_trials:
            width = max(len(t.name) for t in plan.trials)
            print(f"{'#':>4}  {'trial':<{width}}  {'group':<22} {'est.':>9}")
            k = 0
            for phase in plan.phases:
                for trial in phase.trials:
                    k += 1
                    repeat = f" x{phase.search.num_samples} (sampled)" if phase.search else ""
                    print(f"{k:>4}  {trial.name:<{width}}  {trial.group:<22} {_duration(estimates[trial.name]):>9}"
                          f"{repeat}")
        total_s = sum(estimates[t.name] * (p.search.num_samples if p.search else 1)
                      for p in plan.phases for t in p.trials)
        trial_hours = total_s / 3600
        gpu_hours = trial_hours * self.resources.gpus_per_trial
        concurrent = self.resources.max_concurrent or max(1, self.resources.fits(_local_resources()))
        print(f"estimated cost: {trial_hours:.2f} trial-hours"
              + (f", {gpu_hours:.2f} GPU-hours" if gpu_hours else f", {trial_hours * self._cpus():.2f} CPU-hours")
              + f"; about {_duration(total_s / concurrent)} of wall time at {concurrent} trial(s) at once"
              + ("" if self.resources.max_concurrent else " on this machine (--max-concurrent for a cluster)"))
        print(f"cost model: {self._cost_basis()}")

    def estimates(self) -> dict[str, float]:
        """Expected seconds of each trial's trainer (platform/cost.py; Ray's overhead not included)."""
        info = dataset_info(self.plan.data)
        return {t.name: cost.trial_seconds(trainer_config(self.plan.preset, self.plan.data, t),
                                           cost.Trial(t.method, info.n_train(t.category),
                                                      len(info.defect_types(t.category))),
                                           self.plan.preset, self._device(), self.resources.workers)
                for t in self.plan.trials}

    def _device(self) -> str:
        return "gpu" if self.resources.gpus_per_trial else "cpu"

    def _cpus(self) -> float:
        return self.resources.need()["CPU"]

    def _cost_basis(self) -> str:
        return cost.basis({t.method for t in self.plan.trials}, self.plan.preset, self._device())

    def record(self) -> dict:
        return {"sweep_id": self.sweep_id, "kind": self.plan.kind, "build": self.build_options,
                "resources": dataclasses.asdict(self.resources), "storage": self.storage,
                "tracking_uri": self.tracking_uri, "experiment": self.experiment, "dataset": self.plan.dataset,
                "preset": self.plan.preset, "n_trials": self.plan.n_runs}

    # ------------------------------------------------------------ running

    def run(self) -> int:
        import ray
        from trainables.data import resolve_data

        from platform import tables, tracking

        _warn_if_in_job_dir(self)
        resolve_data(self.plan.data)  # generate the embedded set once here, not in N trials at once
        configs = {t.name: to_flat(trainer_config(self.plan.preset, self.plan.data, t)) for t in self.plan.trials}
        started_ray = connect_ray(self.resources)
        try:
            resources = self._size_for_cluster(ray.cluster_resources())
            write_record(self.storage, self.sweep_id, self.record())
            tracking.experiment_id(self.tracking_uri, self.experiment)  # create the store once, before trials
            parent = tracking.open_parent(self.tracking_uri, self.experiment, self.sweep_id,
                                          self._parent_params(), self.record())
            print(f"MLflow parent run {parent} in {self.tracking_uri} (experiment {self.experiment})")
            began = time.monotonic()
            failed, slot_seconds = self._run_phases(resources, parent, configs)
            wall = time.monotonic() - began
            built = tables.build_and_log(self.tracking_uri, parent, out_dir=Path(self.storage_local) / self.sweep_id
                                         / "tables" if self.storage_local else None)
            timing = overhead_summary(self.tracking_uri, parent, slot_seconds)
            tracking.close_parent(self.tracking_uri, parent, failed,
                                  {"sweep_wall_s": round(wall, 1), "failed_trials": failed, **timing})
        finally:
            if started_ray:
                ray.shutdown()
        print(tables.summary_text(built))
        print(f"sweep {self.sweep_id}: {self.plan.n_runs - failed}/{self.plan.n_runs} trials finished in "
              f"{_duration(wall)}" + (f"; {failed} FAILED (rerun the same command to retry them)" if failed else ""))
        if "overhead_s_mean" in timing:
            print(f"per-trial overhead: {timing['overhead_s_mean']:.1f} s inside a trial (its wall time minus the "
                  f"trainer's own {timing['trainer_s_mean']:.1f} s, mean); {timing['overhead_amortized_s']:.1f} s "
                  f"amortized (trial slots x phase wall time minus trainer time, per trial)")
        print(open_ui_hint(self.tracking_uri))
        return 1 if failed else 0

    @property
    def storage_local(self) -> str | None:
        return None if "://" in self.storage else self.storage

    def _parent_params(self) -> dict:
        options = {k: v for k, v in self.plan.options.items() if v not in (None, {}, [])}
        return {"kind": self.plan.kind, "preset": self.plan.preset, "data": self.plan.data,
                "dataset": self.plan.dataset, **options, "n_trials": self.plan.n_runs,
                "workers_per_trial": self.resources.workers, "gpus_per_trial": self.resources.gpus_per_trial,
                "storage": self.storage}

    def _size_for_cluster(self, cluster: dict[str, float]) -> Resources:
        """Concurrency that fits drivers and workers; a local runtime shrinks workers to fit one trial."""
        resources = dataclasses.replace(self.resources)
        fits = resources.fits(cluster)
        if fits < 1 and resources.nested and not os.environ.get("RAY_ADDRESS"):
            # a laptop: share its cores among the workers rather than wait for CPUs that never come
            resources.cpus_per_worker = round((cluster.get("CPU", 1) - DRIVER_CPU) / resources.workers, 3)
            fits = resources.fits(cluster)
            print(f"note: {resources.workers} workers share this machine's {cluster.get('CPU', 0):g} CPUs "
                  f"({resources.cpus_per_worker:g} CPU each)")
        if resources.max_concurrent is None:
            if resources.nested:
                resources.max_concurrent = max(1, fits)
            # 1-worker trials: Tune schedules what fits; an autoscaler sees the pending rest
        elif resources.nested and resources.max_concurrent > max(fits, 1):
            print(f"warning: --max-concurrent {resources.max_concurrent} nested trials, but the cluster fits "
                  f"{fits} drivers plus workers now; relying on the autoscaler (worker start-up times out "
                  f"and fails rather than hangs)")
        missing = [k for k in resources.need() if k not in cluster]
        if missing and not os.environ.get("RAY_ADDRESS"):
            raise UserInputError(f"this machine's local Ray runtime has no {', '.join(missing)}; drop "
                                 f"--driver-resource / --gpus-per-trial, or run on a cluster that has them")
        if missing:
            print(f"note: no node of the cluster has {', '.join(missing)} now; trials wait for the autoscaler")
        if fits < 1:
            print(f"note: no trial fits the cluster now ({_fmt(resources.need())} per trial, cluster "
                  f"{_fmt(cluster)}); trials wait for the autoscaler to add nodes")
        shown = resources.max_concurrent or max(fits, 1)
        print(f"concurrency: {shown} trials at once ({_fmt(resources.need())} each; cluster {_fmt(cluster)})")
        return resources

    def _run_phases(self, resources: Resources, parent: str, configs: dict) -> tuple[int, float]:
        """Run every phase; returns (failed trials, trial-slot seconds = slots x phase wall time)."""
        import ray

        from platform import tracking

        provenance = {"preset": self.plan.preset, "dataset": self.plan.dataset, "data": self.plan.data,
                      **tracking.provenance()}
        done_checkpoints: dict[str, str] = {}
        failed, slot_seconds = 0, 0.0
        for phase in self.plan.phases:
            trials = [_with_dependency(t, done_checkpoints) for t in phase.trials]
            runnable = [t for t in trials if t is not None]
            skipped = len(trials) - len(runnable)
            if skipped:
                print(f"phase {phase.name}: {skipped} trials skipped (the trial they start from failed)")
                failed += skipped
            if not runnable:
                continue
            trial_info = {t.name: {"params": dict(t.params), "config": configs[t.name]} for t in runnable}
            callback = tracking.MLflowTrialCallback(self.tracking_uri, parent, trial_info, provenance, self.storage,
                                                    total=phase.search.num_samples if phase.search else len(runnable))
            began = time.monotonic()
            results = run_phase(self, phase, runnable, resources, callback)
            slots = resources.max_concurrent or max(1, resources.fits(ray.cluster_resources()))
            slot_seconds += min(slots, len(results)) * (time.monotonic() - began)
            for result in results:
                name = result.config["trial"]["name"]  # a grid trial's spec name (dependencies use it)
                if result.error is not None:
                    failed += 1
                    continue
                path = _checkpoint_path(result, self.storage)
                if path:
                    done_checkpoints[name] = path
        return failed, slot_seconds


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


def run_phase(sweep: Sweep, phase, trials: list[TrialSpec], resources: Resources, callback):
    """One Tune experiment: a grid over explicit trials, or an Optuna study; restored if it exists."""
    from ray import tune

    from trainables.ray_adapter import run_trial, trial_config

    train_storage = _join(sweep.storage, sweep.sweep_id, "train")
    configs = [{**trial_config(t.method, sweep.plan.preset, t.overrides, workers=resources.workers,
                               cpus_per_worker=resources.cpus_per_worker, gpus_per_worker=resources.gpus_per_worker,
                               train_storage=train_storage, max_failures=TRAIN_RETRIES,
                               controller_failure_limit=TRAIN_RETRIES),
                "name": t.name, "group": t.group, "category": t.category, "seed": t.seed} for t in trials]
    trainable = tune.with_resources(run_trial, resources.trial_bundle())
    if phase.search is None:
        param_space = {"trial": tune.grid_search(configs)}
        # reusing trial actors keeps torch imported and the decoded data cached across trials
        # (a fresh actor costs seconds per trial); loops seed themselves from their config
        tune_config = tune.TuneConfig(max_concurrent_trials=resources.max_concurrent,
                                      reuse_actors=not resources.nested,
                                      trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    else:
        param_space, tune_config = _search_setup(phase.search, configs[0], resources, sweep)
    path = _join(sweep.storage, sweep.sweep_id, phase.name)
    if tune.Tuner.can_restore(path):
        print(f"phase {phase.name}: resuming {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_errored=True)
    else:
        print(f"phase {phase.name}: {len(trials) if phase.search is None else phase.search.num_samples} trials")
        run_config = tune.RunConfig(
            name=phase.name, storage_path=_join(sweep.storage, sweep.sweep_id), callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            verbose=0)  # Tune's tables print every config and result; the callback prints one line each
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return tuner.fit()


def _search_setup(search, template: dict, resources: Resources, sweep: Sweep):
    """Optuna over `search.space` around `template`, ASHA on a metric every report carries."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    # Optuna's objective exists only in a trial's last report; Tune's strict check would
    # reject every earlier report, and OptunaSearch would fail on them (_final_metric_optuna)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    cfg = trainer_config(sweep.plan.preset, sweep.plan.data, sweep.plan.phases[0].trials[0])
    reports = max(1, getattr(cfg, "epochs", 100) // max(1, getattr(cfg, "report_every", 1)))
    space = {name: (tune.loguniform if dist == "loguniform" else tune.uniform)(low, high)
             for name, (dist, low, high) in search.space.items()}
    searcher = _final_metric_optuna()(metric=search.metric, mode=search.mode, seed=0)
    concurrent = resources.max_concurrent or max(1, resources.fits(_cluster_or_local()))
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent), num_samples=search.num_samples,
        scheduler=ASHAScheduler(time_attr="training_iteration", metric=search.asha_metric, mode=search.asha_mode,
                                max_t=reports + 1, grace_period=search.grace_period),
        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    return {"trial": template, "search": space}, tune_config


def _final_metric_optuna():
    """OptunaSearch that skips reports without its metric (the detector's objective comes last;
    the stock class raises KeyError on the first epoch's report)."""
    from ray.tune.search.optuna import OptunaSearch

    class FinalMetricOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalMetricOptunaSearch


def _trial_name(trial) -> str:
    from platform.tracking import trial_name

    return trial_name(trial)


# ---------------------------------------------------------------- Ray, storage, sweep ids

def _quiet_tune() -> None:
    """Tune warns on every forced experiment snapshot, which `num_to_keep` causes by design."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def connect_ray(resources: Resources) -> bool:
    """$RAY_ADDRESS when set (a cluster, or a `ray job`), else a new local runtime with the
    dashboard (Train V2 needs its State API, §2.4). Never `ray.init()` without an address: it
    would attach to whatever cluster this machine last started (pitfall 25). True if started here."""
    import ray

    _quiet_tune()
    if ray.is_initialized():  # a caller (a notebook, a test) already connected this process
        print(f"using this process's Ray connection ({_fmt(ray.cluster_resources())})")
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        print(f"connected to the Ray cluster at {address}")
        return False
    context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                       logging_level="WARNING")
    print(f"started a local Ray runtime ({_fmt(ray.cluster_resources())}); dashboard: "
          f"http://{context.dashboard_url}")
    return True


def make_sweep_id(plan: SweepPlan, workers: int = 1) -> str:
    """`<kind>[-<grid>]-<preset>-<hash>`: the same options always give the same id. The Train
    world size is part of it (DDP shards batches, so results differ); GPUs and CPUs are not."""
    key = json.dumps({"kind": plan.kind, "preset": plan.preset, "data": plan.data, "options": plan.options,
                      "workers": workers}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    grid = plan.options.get("grid")
    return "-".join([plan.kind] + ([grid] if grid else []) + [plan.preset, digest])


def write_record(storage: str, sweep_id: str, record: dict) -> None:
    _write_text(_join(storage, sweep_id, "sweep.json"), json.dumps(record, indent=2, sort_keys=True))


def read_record(storage: str, sweep_id: str, tracking_uri: str | None) -> dict:
    """A sweep's saved record: from its storage folder, else from its MLflow parent run."""
    path = _join(_absolute(storage), sweep_id, "sweep.json")
    try:
        return json.loads(_read_text(path))
    except FileNotFoundError:
        pass
    from platform import tracking

    uri = tracking_uri or tracking.default_tracking_uri(REPO)
    parent = tracking.find_parent(uri, sweep_id)
    if parent is None:
        raise UserInputError(f"--resume {sweep_id}: no such sweep in {path} or in {uri}")
    local = tracking.client(uri).download_artifacts(parent.info.run_id, "sweep.json")
    return json.loads(Path(local).read_text())


def _write_text(path: str, text: str) -> None:
    if "://" in path:
        import pyarrow.fs

        filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        filesystem.create_dir(fs_path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(fs_path) as out:
            out.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _read_text(path: str) -> str:
    if "://" in path:
        import pyarrow.fs

        filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        if filesystem.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(path)
        with filesystem.open_input_stream(fs_path) as stream:
            return stream.read().decode()
    return Path(path).read_text()


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _absolute(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _warn_if_in_job_dir(sweep: Sweep) -> None:
    """Under `ray job submit --working-dir .`, the cwd is a copy Ray deletes: say so."""
    if "runtime_resources" in str(REPO):
        for what, where in (("storage", sweep.storage), ("tracking store", sweep.tracking_uri)):
            if str(REPO) in where:
                print(f"warning: the {what} {where} is inside this job's temporary working dir; pass "
                      f"--storage / --tracking-uri (or MLFLOW_TRACKING_URI) to keep results", file=sys.stderr)


def _cluster_or_local() -> dict[str, float]:
    import ray

    return ray.cluster_resources() if ray.is_initialized() else _local_resources()


def _local_resources() -> dict[str, float]:
    return {"CPU": float(os.cpu_count() or 1)}


def _with_dependency(trial: TrialSpec, checkpoints: dict[str, str]) -> TrialSpec | None:
    """The trial with its earlier trial's checkpoint filled in (None if that trial failed)."""
    if trial.needs is None:
        return trial
    if trial.needs not in checkpoints:
        return None
    return dataclasses.replace(trial, overrides={**trial.overrides, trial.needs_key: checkpoints[trial.needs]})


def _checkpoint_path(result, storage: str) -> str | None:
    """Where a finished trial's last checkpoint is: a path, or a URI when storage is remote
    (the adapter copies such inputs to the trial's node)."""
    if result.metrics and result.metrics.get("checkpoint_path"):
        path = result.metrics["checkpoint_path"]  # nested Train run
    elif result.checkpoint is not None:
        path = result.checkpoint.path
    else:
        return None
    scheme = storage.split("://", 1)[0] if "://" in storage else None
    return f"{scheme}://{path}" if scheme and "://" not in path else path


def _build_options(args) -> dict:
    """The builder's arguments from the command line (stored, so --resume rebuilds the same plan)."""
    extra = parse_overrides(args.set)
    info = dataset_info(args.data)
    data = args.data if args.data == "embedded" else str(info.path)
    options = {"data": data, "categories": list(args.categories) if args.categories else None,
               "preset": args.preset, "extra": extra}
    if args.kind == "ablation":
        options.update(grid=args.grid, rows=args.rows, seeds=args.seeds)
    elif args.kind == "gan":
        options.update(defects=args.defects, lambdas=args.lambdas, seeds=args.seeds)
    elif args.kind == "classify":
        options.update(partitions=args.partitions, seeds=args.seeds)
    elif args.kind == "hpo":
        if args.seeds != 1:
            raise UserInputError(f"--seeds {args.seeds}: hpo runs one seed per study (seed 0)")
        options.update(samples=args.samples, row=args.row)
    return options


# ---------------------------------------------------------------- reporting

def report(sweep_id: str, tracking_uri: str | None, out: str | None) -> int:
    from platform import tables, tracking

    uri = tracking_uri or tracking.default_tracking_uri(REPO)
    parent = tracking.find_parent(uri, sweep_id)
    if parent is None:
        raise UserInputError(f"sweep {sweep_id}: no parent run tagged sweep_id={sweep_id} in {uri}")
    built = tables.build_and_log(uri, parent.info.run_id, out_dir=Path(out) if out else None)
    print(tables.summary_text(built))
    print(open_ui_hint(uri))
    return 0


def open_ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {tracking_uri} (tables: the sweep's parent run > Artifacts > tables/)"
    return (f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000, then open "
            f"http://127.0.0.1:5000 (tables: the sweep's parent run > Artifacts > tables/)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(resources: dict[str, float]) -> str:
    keys = [k for k in resources if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store",
                                                                              "accelerator_type"))]
    keys = [k for k in keys if resources.get(k)]
    return ", ".join(f"{resources[k]:g} {k}" for k in keys) or "nothing"


if __name__ == "__main__":
    run_main(main)

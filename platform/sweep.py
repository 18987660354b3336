"""`python -m platform.sweep {ablation,gan,classify,hpo,report}`: Ray Tune sweeps tracked in MLflow.

The command line of the sweep platform; it parses, prints and returns exit codes, and leaves
the work to the modules of one concern each: search_spaces/ expands and validates the plan
(every trial's config built once), platform/resources.py sizes concurrency, platform/runner.py
runs the phases (platform/tuner.py for Ray Tune, platform/tracking.py for MLflow),
platform/tables.py builds the tables, platform/storage.py keeps sweep records.

Order of events, so bad input costs nothing: the plan is built and validated (UserInputError:
one line, exit 2, no Ray, no MLflow run), `--dry-run` prints the trials, their resources and
an estimated cost and stops there; only then are Ray and the parent run started. The sweep
id is a hash of the sweep's options, so running the same command again, or `--resume ID`,
continues the same sweep (Tuner.restore, same parent run) instead of starting a new one.
`report SWEEP_ID` rebuilds the tables from MLflow alone.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import search_spaces
from platform import cost, storage
from platform.cli import run_main
from platform.resources import Resources
from platform.runner import Sweep
from search_spaces.base import check_world_size, dataset_info
from trainables.config import parse_overrides
from trainables.errors import UserInputError


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
            sub.add_argument("--sources", nargs="+", metavar="SOURCE",
                             help="appearance sources, of mvtec dtd dfmgan: the factorial's source axis, or each "
                                  "paper row again with every source; dfmgan adds DFMGAN stage 1 and 2 phases "
                                  "(--set gan.KEY=VALUE sets their fields)")
            sub.add_argument("--lambdas", type=float, nargs="+",
                             help="DFMGAN mode-seeking weights of the dfmgan source (default 0.1)")
        if kind == "gan":
            sub.add_argument("--defects", nargs="+", help="defect types (default: every type of each category)")
            sub.add_argument("--lambdas", type=float, nargs="+", help="mode-seeking weights (default 0 .05 .1 .2 .5)")
        if kind == "classify":
            sub.add_argument("--partitions", type=int, default=3, help="random 1/3-2/3 partitions per category")
        if kind == "hpo":
            sub.add_argument("--samples", type=int, default=8, help="Optuna trials per category")
            sub.add_argument("--row", type=int, default=7, help="Table 4 row used as the template (default: full)")
    status_parser = kinds.add_parser("status", help="each trial's state, last metric and checkpoint age; works "
                                                    "while the sweep runs and after it stopped")
    status_parser.add_argument("sweep_id")
    status_parser.add_argument("--storage", help=f"the sweep's storage (default: {storage.DEFAULT_STORAGE})")
    status_parser.add_argument("--tracking-uri", help="MLflow store (default: the one the sweep recorded)")
    report_parser = kinds.add_parser("report", help="rebuild a sweep's tables from MLflow alone")
    report_parser.add_argument("sweep_id")
    report_parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite mlflow.db)")
    report_parser.add_argument("--out", help="also write the tables (Markdown, CSV) to this folder")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="embedded", help="'embedded' or a folder in the MVTec AD layout "
                                                           "(a relative path is resolved here, on the driver)")
    parser.add_argument("--categories", nargs="+", help="categories to sweep (default: all of the dataset's)")
    parser.add_argument("--preset", default="small", help="trainer preset: tiny (tests), small (CPU laptop), paper")
    parser.add_argument("--seeds", type=int, help=f"seeds per cell (0..N-1; default {PAPER_SEEDS} for the paper "
                                                   f"preset, where the tables test differences between rows, else 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one trainer config field in every trial; repeatable")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="Train workers per trial; 1 runs the loop in the Tune trial itself")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial; fractions pack several 1-worker trials on a GPU")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits at its "
                                                           "largest: the autoscaler's max, else --cluster-max-*, "
                                                           "else the nodes up now)")
    parser.add_argument("--cluster-max-cpus", type=float, metavar="N",
                        help="CPUs the autoscaler can grow the cluster to, where it does not publish its node types "
                             "(a `ray up` cluster); sizes concurrency; may change on --resume")
    parser.add_argument("--cluster-max-gpus", type=float, metavar="N", help="GPUs likewise")
    parser.add_argument("--worker-start-timeout-minutes", type=float, default=10.0,
                        help="how long a multi-worker trial waits for its Train workers (a cold GPU node boots in "
                             "minutes) before the attempt fails; may change on --resume")
    parser.add_argument("--retries", type=int, default=3,
                        help="relaunches of a crashed, preempted or OOM-killed trial, from its last checkpoint "
                             "(bad input fails at once); may change on --resume")
    parser.add_argument("--tracking-outage-minutes", type=float, default=10.0,
                        help="how long the MLflow store may be unreachable (writes are queued) before the sweep "
                             "fails; may change on --resume")
    parser.add_argument("--log-full-checkpoint", action="store_true",
                        help="MLflow keeps each trial's full last checkpoint (optimiser state too; resumable) "
                             "instead of its final weights only; may change on --resume")
    parser.add_argument("--driver-resource", metavar="NAME",
                        help="custom Ray resource the drivers of multi-worker trials ask for, to keep them on "
                             "on-demand nodes (cluster/ configs advertise 'trial_driver')")
    parser.add_argument("--storage", help=f"trial storage, a shared path or URI on clusters "
                                          f"(default: {storage.DEFAULT_STORAGE})")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite mlflow.db "
                                               "in the repo)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: defect-sweeps)")
    parser.add_argument("--resume", metavar="SWEEP_ID", help="continue this sweep: only its unfinished trials run "
                                                             "(its saved options win; --max-concurrent, --retries, "
                                                             "--tracking-* may change)")
    parser.add_argument("--dry-run", action="store_true", help="print trials, resources and cost; start nothing")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "report":
        return report(args.sweep_id, args.tracking_uri, args.out)
    if args.kind == "status":
        from platform import status

        print(status.status_text(args.sweep_id, args.storage or str(storage.DEFAULT_STORAGE), args.tracking_uri))
        return 0
    sweep = sweep_from_args(args)
    from platform import runner, tables, tracking

    if not args.dry_run:
        tracking.check_store(sweep.tracking_uri)  # before anything starts or prints
    describe(sweep, list_trials=args.dry_run)
    if args.dry_run:
        return 0
    try:
        outcome = runner.run(sweep)
    except runner.SweepFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if outcome.interrupted is not None:
        shown = ", ".join(outcome.unfinished[:8]) + (", ..." if len(outcome.unfinished) > 8 else "")
        print(f"sweep {sweep.sweep_id}: interrupted ({signal.Signals(outcome.interrupted).name}); "
              f"{len(outcome.unfinished)} of {sweep.plan.n_runs} trials unfinished: {shown}")
        print(f"continue it with: {continue_command(sweep)}")
        return 128 + outcome.interrupted
    print(tables.summary_text(outcome.tables))
    print(f"sweep {sweep.sweep_id}: {outcome.finished}/{sweep.plan.n_runs} trials finished in "
          f"{_duration(outcome.wall_s)}"
          + (f"; {outcome.failed} FAILED (rerun the same command to retry them)" if outcome.failed else ""))
    timing = outcome.timing
    if "overhead_s_mean" in timing:
        amortized = timing.get("overhead_amortized_s")
        print(f"per-trial overhead: {timing['overhead_s_mean']:.1f} s inside a trial (its wall time minus the "
              f"trainer's own {timing['trainer_s_mean']:.1f} s, mean)"
              + (f"; {amortized:.1f} s amortized (trial slots x phase wall time minus trainer time, per trial)"
                 if amortized is not None else ""))
    print(_ui_hint(sweep.tracking_uri, outcome.parent_run_id))
    if outcome.failed:
        print(f"continue it with: {continue_command(sweep)}")
    return 1 if outcome.failed else 0


def continue_command(sweep: Sweep) -> str:
    """The command that runs a sweep's unfinished trials."""
    return (f"python -m platform.sweep {sweep.plan.kind} --resume {sweep.sweep_id} --storage {sweep.storage}"
            + (f" --tracking-uri {sweep.tracking_uri}" if sweep.tracking_uri != sweep.record()["tracking_uri"]
               else ""))


# ---------------------------------------------------------------- the sweep from the command line

def sweep_from_args(args) -> Sweep:
    """The validated sweep the command line asks for (or the saved one, with --resume)."""
    from platform import tracking

    if args.resume:
        record = _saved_record(args.storage or str(storage.DEFAULT_STORAGE), args.resume, args.tracking_uri)
        _refuse_changes(args, record)
        kind, build_options = record["kind"], record["build"]
        resources = Resources(**record["resources"])
        if args.max_concurrent:
            resources.max_concurrent = args.max_concurrent
        sweep_storage, experiment = record["storage"], record["experiment"]
        tracking_uri = args.tracking_uri or record["tracking_uri"]
    else:
        kind = args.kind
        build_options = build_options_from(args)
        resources = Resources(args.workers_per_trial, args.gpus_per_trial, args.cpus_per_worker,
                              args.max_concurrent, args.driver_resource)
        sweep_storage = storage.absolute(args.storage or str(storage.DEFAULT_STORAGE))
        tracking_uri = args.tracking_uri or tracking.default_tracking_uri(storage.REPO)
        experiment = args.experiment or tracking.DEFAULT_EXPERIMENT
    plan = search_spaces.build(kind, **build_options)
    check_world_size(plan, resources.workers)
    sweep_id = storage.make_sweep_id(plan, resources.workers)
    if args.resume and sweep_id != args.resume:
        raise UserInputError(f"--resume {args.resume}: its saved options now give sweep {sweep_id}; "
                             f"the search space changed since it ran")
    if args.retries < 0 or args.tracking_outage_minutes <= 0:
        raise UserInputError("--retries and --tracking-outage-minutes: expected >= 0 and > 0")
    if args.worker_start_timeout_minutes <= 0:
        raise UserInputError(f"--worker-start-timeout-minutes {args.worker_start_timeout_minutes:g}: expected > 0")
    cluster_max = {key: value for key, value in (("CPU", args.cluster_max_cpus), ("GPU", args.cluster_max_gpus))
                   if value is not None}
    if any(value < 0 for value in cluster_max.values()):
        raise UserInputError("--cluster-max-cpus / --cluster-max-gpus: expected >= 0")
    return Sweep(plan, build_options, sweep_id, resources, sweep_storage, tracking_uri, experiment,
                 retries=args.retries, tracking_outage_s=60 * args.tracking_outage_minutes,
                 cluster_max=cluster_max or None, worker_start_timeout_s=60 * args.worker_start_timeout_minutes,
                 log_full_checkpoint=args.log_full_checkpoint)


PAPER_SEEDS = 3  # the paper preset's default: enough (category, seed) pairs for the comparisons table

# flags a resumed sweep keeps from its record: they change the plan or where it lives
FIXED_ON_RESUME = ("data", "categories", "preset", "seeds", "set", "grid", "rows", "sources", "defects", "lambdas",
                   "partitions",
                   "samples", "row", "workers_per_trial", "gpus_per_trial", "cpus_per_worker", "driver_resource",
                   "experiment")


def _refuse_changes(args, record: dict) -> None:
    """--resume with a flag that would change the sweep: one line naming the flag."""
    defaults = vars(build_parser().parse_args([args.kind, "--resume", "x"]))
    for name in FIXED_ON_RESUME:
        given = getattr(args, name, None)
        if name in defaults and given != defaults[name]:
            raise UserInputError(f"--{name.replace('_', '-')}: cannot change when resuming sweep {args.resume} "
                                 f"(it changes the trials or where they run); drop it, or start a new sweep "
                                 f"without --resume")


def build_options_from(args) -> dict:
    """The builder's arguments from the command line (stored, so --resume rebuilds the same plan).
    A dataset path is made absolute here, on the driver: workers run elsewhere."""
    extra = parse_overrides(args.set)
    info = dataset_info(args.data)
    seeds = args.seeds if args.seeds is not None else PAPER_SEEDS if args.preset == "paper" and args.kind != "hpo" else 1
    data = args.data if args.data == "embedded" else str(info.path)
    options = {"data": data, "categories": list(args.categories) if args.categories else None,
               "preset": args.preset, "extra": extra}
    if args.kind == "ablation":
        options.update(grid=args.grid, rows=args.rows, seeds=seeds)
        if args.sources or args.lambdas:  # absent otherwise: records of earlier sweeps rebuild unchanged
            options.update(sources=args.sources, lambdas=args.lambdas)
    elif args.kind == "gan":
        options.update(defects=args.defects, lambdas=args.lambdas, seeds=seeds)
    elif args.kind == "classify":
        options.update(partitions=args.partitions, seeds=seeds)
    elif args.kind == "hpo":
        if seeds != 1:
            raise UserInputError(f"--seeds {args.seeds}: hpo runs one seed per study (seed 0)")
        options.update(samples=args.samples, row=args.row)
    return options


def _saved_record(sweep_storage: str, sweep_id: str, tracking_uri: str | None) -> dict:
    """A sweep's saved record: from its storage folder, else from its MLflow parent run."""
    record = storage.read_record(sweep_storage, sweep_id)
    if record is not None:
        return record
    from platform import tracking

    uri = tracking_uri or tracking.default_tracking_uri(storage.REPO)
    record = tracking.parent_record(uri, sweep_id)
    if record is None:
        raise UserInputError(f"--resume {sweep_id}: no such sweep in {storage.join(sweep_storage, sweep_id)} "
                             f"or in {uri}")
    return record


# ---------------------------------------------------------------- printing

def describe(sweep: Sweep, list_trials: bool) -> None:
    """The plan, its resources and its estimated cost."""
    plan, resources = sweep.plan, sweep.resources
    phases = "" if len(plan.phases) == 1 else " (" + ", ".join(
        f"{p.name}: {p.search.num_samples if p.search else len(p.trials)}" for p in plan.phases) + ")"
    print(f"sweep {sweep.sweep_id}: {plan.n_runs} trials{phases}; preset {plan.preset}; "
          f"dataset {plan.dataset} ({plan.data})")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"resources per trial: {resources.describe()}")
    if resources.driver_resource and not resources.nested:
        print(f"note: --driver-resource {resources.driver_resource} is unused: a 1-worker trial "
              f"runs its loop in the trial itself, on a worker node")
    estimates = sweep.estimates()
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
    if len(plan.phases) > 1:  # phases run one after the other: each one's share of the cost
        print("phases: " + "; ".join(
            f"{p.name} {p.search.num_samples if p.search else len(p.trials)} trials, "
            f"{sum(estimates[t.name] * (p.search.num_samples if p.search else 1) for t in p.trials) / 3600:.2f} "
            f"trial-hours" for p in plan.phases))
    trial_hours = total_s / 3600
    gpu_hours = trial_hours * resources.gpus_per_trial
    where = sweep.cluster_max or {"CPU": float(os.cpu_count() or 1)}
    concurrent = resources.max_concurrent or max(1, resources.fits(where))
    print(f"estimated cost: {trial_hours:.2f} trial-hours"
          + (f", {gpu_hours:.2f} GPU-hours" if gpu_hours else
             f", {trial_hours * resources.need()['CPU']:.2f} CPU-hours")
          + f"; about {_duration(total_s / concurrent)} of wall time at {concurrent} trial(s) at once"
          + ("" if resources.max_concurrent or sweep.cluster_max else
             " on this machine (--max-concurrent or --cluster-max-cpus/-gpus for a cluster)"))
    print(f"cost model: {cost.basis({t.method for t in plan.trials}, plan.preset, sweep.device)}")
    print(checkpoint_text(sweep))


def checkpoint_text(sweep: Sweep) -> str:
    """What the sweep's checkpoints write: per trial (the largest) and in all, to storage and MLflow."""
    sizes = sweep.checkpoint_bytes()
    repeat = {t.name: p.search.num_samples if p.search else 1 for p in sweep.plan.phases for t in p.trials}
    if not any(b.written for b in sizes.values()):
        return "checkpoints: none with model weights"
    name = max(sizes, key=lambda n: sizes[n].written)
    one = sizes[name]
    minutes = next(getattr(t.cfg, "checkpoint_minutes", None) for t in sweep.plan.trials if t.name == name)
    rule = ("the final one only" if minutes is None else "one at every report, plus the final" if minutes == 0
            else f"one every {minutes:g} min (checkpoint_minutes) over its expected time, plus the final")
    total = {key: sum(getattr(b, key) * repeat[n] for n, b in sizes.items()) for key in ("written", "kept", "mlflow")}
    mlflow = "full checkpoint" if sweep.log_full_checkpoint else "final weights only"
    return (f"checkpoints: per trial up to {_bytes(one.written)} written to storage ({one.checkpoints} x "
            f"{_bytes(one.written // one.checkpoints)}: {rule}), {_bytes(one.kept)} kept there, "
            f"{_bytes(one.mlflow)} in MLflow ({mlflow}); sweep: {_bytes(total['written'])} written, "
            f"{_bytes(total['kept'])} kept in storage, {_bytes(total['mlflow'])} in MLflow (pictures not counted)")


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def report(sweep_id: str, tracking_uri: str | None, out: str | None) -> int:
    from platform import tables, tracking

    uri = tracking_uri or tracking.default_tracking_uri(storage.REPO)
    parent = tracking.find_parent(uri, sweep_id)
    if parent is None:
        raise UserInputError(f"sweep {sweep_id}: no parent run tagged sweep_id={sweep_id} in {uri}")
    built = tables.build_and_log(uri, parent.info.run_id, out_dir=Path(out) if out else None)
    print(tables.summary_text(built))
    print(_ui_hint(uri, parent.info.run_id))
    return 0


LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3.17's UI shows GenAI pages unless the URL (or the browser's last choice) says otherwise;
# the experiment's kind tag does not decide it there (platform/tracking.py, `experiment_id`)
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def open_ui_hint(tracking_uri: str, experiment_id: str, run_ids: list[str], view: str | None = None) -> str:
    """How to open the sweep in the MLflow UI: its experiment's runs (in the sweep's own `view`
    when it has one: platform/ui_view.py), that view's charts, and the compare view of its trials."""
    from platform import ui_view

    if tracking_uri.startswith(("http://", "https://")):
        ui, start = tracking_uri.rstrip("/"), "MLflow UI:"
    else:
        ui = LOCAL_UI
        start = f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000, then open"
    lines = [f"{start} {runs_url(ui, experiment_id, view)} (tables: the sweep's parent run > Artifacts > tables/)"]
    if view:
        lines.append(f"charts of the paper's metrics: {runs_url(ui, experiment_id, view)}&{ui_view.CHART_MODE}")
    if run_ids:
        lines.append(f"compare its {len(run_ids)} trials: {compare_url(ui, experiment_id, run_ids)}")
    return "\n".join(lines)


def runs_url(ui: str, experiment_id: str, view: str | None = None) -> str:
    """The experiment's Runs page in the UI's model-training view, in a saved view when given."""
    shared = f"viewStateShareKey={quote(view)}&" if view else ""
    return f"{ui}/#/experiments/{experiment_id}/runs?{shared}{MODEL_TRAINING_VIEW}"


def compare_url(ui: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page: `#/compare-runs?runs=<JSON list>&experiments=<JSON list>`, the
    lists percent-encoded so that a terminal keeps the link whole (the page decodes them)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = quote(json.dumps([str(experiment_id)]))
    return f"{ui}/#/compare-runs?runs={runs}&experiments={experiments}&{MODEL_TRAINING_VIEW}"


def _ui_hint(tracking_uri: str, parent_run_id: str) -> str:
    """`open_ui_hint` for a sweep: its experiment, its view (written when it started), and its
    finished trials in trial-name order."""
    from platform import tracking, ui_view

    mlflow_client = tracking.client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    experiment = parent.info.experiment_id
    view = parent.info.run_name
    if ui_view.SHARED_VIEW_TAG + view not in mlflow_client.get_experiment(experiment).tags:
        view = None   # a sweep from before views
    trials = sorted((r for r in tracking.children(tracking_uri, parent_run_id) if r.info.status == "FINISHED"),
                    key=lambda r: r.info.run_name)
    return open_ui_hint(tracking_uri, experiment, [r.info.run_id for r in trials], view)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    run_main(main)

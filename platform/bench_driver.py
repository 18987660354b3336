"""`python -m platform.bench_driver`: what the sweep driver costs per trial, at cluster scale.

Starts a local multi-node cluster (cluster/local.py: a head with no CPUs plus `--workers` nodes
of `--worker-cpus`; or uses `--address` of a running one, with RAY_AUTH_MODE and the token in
the environment), runs a sweep of `--trials` trials of a trainer that only sleeps
(trainables/bench_trainer.py: `--reports` reports, `--checkpoints` of them with a checkpoint)
through `runner.run` with a hand-built plan, exactly as a real sweep runs (Tune, the Ray
adapter, the MLflow callback and its background writer, a SQLite store), and prints:

- the driver's CPU seconds per trial (this process only: Ray's daemons and the trials' workers
  are other processes);
- MLflow requests per trial: the writer's store calls, and every client call made in this
  process (the synchronous ones at the start and end of the sweep included);
- per-trial overhead: a trial's wall time in the driver minus its trainer's own time (the
  callback's `overhead_s`);
- makespan against the ideal: the trainers' total time divided by the cluster's trial slots.

then the figures as one JSON line, the last line of stdout. `--profile FILE` writes a cProfile
of the driver's main thread (Tune's event loop). Not a test: it asserts nothing.
"""

import argparse
import cProfile
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from platform.cli import run_main
from trainables.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent
METHOD = "trainables.bench_trainer:train_bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m platform.bench_driver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500, help="trials in the sweep (default: %(default)s)")
    parser.add_argument("--reports", type=int, default=20, help="reports per trial (default: %(default)s)")
    parser.add_argument("--checkpoints", type=int, default=2, help="checkpoints per trial (default: %(default)s)")
    parser.add_argument("--step-s", type=float, default=0.1,
                        help="trainer seconds before each report (a sleep; default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes to start (default: %(default)s)")
    parser.add_argument("--worker-cpus", type=int, default=1, help="CPUs per worker node (default: %(default)s)")
    parser.add_argument("--address", help="a running cluster's GCS address instead of starting one")
    parser.add_argument("--out", type=Path, help="storage and MLflow store folder (default: a temporary one)")
    parser.add_argument("--profile", type=Path, metavar="FILE", help="write a cProfile of the driver's main thread")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.trials < 1:
        raise UserInputError(f"--trials {args.trials}: expected at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-driver-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
        return _bench(args, out)
    with local_cluster(args.workers, args.worker_cpus):
        return _bench(args, out)


def _bench(args, out: Path) -> int:
    import ray

    from platform import runner, storage, tracking
    from platform.resources import Resources
    from search_spaces.base import Phase, SweepPlan, TrialSpec, validate_plan

    knobs = {"reports": args.reports, "checkpoints": args.checkpoints, "step_s": args.step_s}
    trials = tuple(TrialSpec(METHOD, f"bench-{k:04d}", "bench", "bolt", k, {}, {"category": "bolt", "seed": k, **knobs})
                   for k in range(args.trials))
    # "hpo": its table (the best trial per category) is the one that needs no layout of the plan
    plan = validate_plan(SweepPlan("hpo", "tiny", "embedded", "embedded", {"bench": args.trials, **knobs},
                                   (Phase("bench", trials),)))
    resources = Resources(workers=1, gpus_per_trial=0, cpus_per_worker=1, max_concurrent=None)
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    sweep = runner.Sweep(plan, {}, storage.make_sweep_id(plan), resources, str((out / "storage").resolve()), uri,
                         "driver-bench")
    calls = _count_client_calls(tracking)
    cpu0, wall0 = _cpu_s(), time.monotonic()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    try:
        outcome = runner.run(sweep)
    finally:
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
    cpu, total_wall = _cpu_s() - cpu0, time.monotonic() - wall0
    slots = int(ray.cluster_resources().get("CPU", 0) // resources.cpus_per_worker)
    ray.shutdown()
    writer = tracking.LIVE[outcome.parent_run_id].writer
    runs = [r for r in tracking.children(uri, outcome.parent_run_id) if "trainer_s" in r.data.metrics]
    trainer = [r.data.metrics["trainer_s"] for r in runs]
    waited = [r.data.metrics["report_s"] for r in runs if "report_s" in r.data.metrics]   # blocked in report
    overhead = sorted(r.data.metrics["overhead_s"] for r in runs if "overhead_s" in r.data.metrics)
    n = args.trials
    ideal = sum(trainer) / max(slots, 1)
    figures = {
        "trials": n, "finished": outcome.finished, "failed": outcome.failed, "slots": slots,
        "reports": args.reports, "checkpoints": args.checkpoints, "step_s": args.step_s,
        "driver_cpu_s": round(cpu, 2), "driver_cpu_s_per_trial": round(cpu / n, 4),
        "writer_requests": writer.requests, "writer_requests_per_trial": round(writer.requests / n, 2),
        "client_calls": calls["all"], "client_calls_sync": calls["sync"],
        "client_calls_per_trial": round(calls["all"] / n, 2),
        "overhead_s_mean": round(statistics.fmean(overhead), 3) if overhead else None,
        "overhead_s_median": round(statistics.median(overhead), 3) if overhead else None,
        "overhead_s_p90": round(overhead[int(0.9 * (len(overhead) - 1))], 3) if overhead else None,
        "trainer_s_mean": round(statistics.fmean(trainer), 3) if trainer else None,
        "report_s_mean": round(statistics.fmean(waited), 3) if waited else None,
        "makespan_s": round(outcome.wall_s, 1), "ideal_s": round(ideal, 1),
        "makespan_efficiency": round(ideal / outcome.wall_s, 3) if outcome.wall_s else None,
        "driver_wall_s": round(total_wall, 1)}
    print(f"{n} trials ({outcome.finished} finished, {outcome.failed} failed) on {slots} slots, "
          f"{args.reports} reports and {args.checkpoints} checkpoints each, trainer {figures['trainer_s_mean']} s")
    print(f"driver CPU: {cpu:.1f} s, {cpu / n:.3f} s per trial")
    print(f"MLflow: {writer.requests} writer requests ({writer.requests / n:.1f} per trial), {calls['all']} client "
          f"calls in all ({calls['all'] / n:.1f} per trial; {calls['sync']} outside the writer)")
    print(f"overhead per trial: mean {figures['overhead_s_mean']} s, median {figures['overhead_s_median']} s, "
          f"p90 {figures['overhead_s_p90']} s (target <= 1 s); of it, in report() before the last one: "
          f"{figures['report_s_mean']} s")
    print(f"makespan {outcome.wall_s:.1f} s vs ideal {ideal:.1f} s (trainer time / {slots} slots): "
          f"{figures['makespan_efficiency']} of ideal (target >= 0.9)")
    print(json.dumps(figures))
    return 0 if outcome.failed == 0 else 1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count_client_calls(tracking) -> dict[str, int]:
    """Count every MlflowClient method call made in this process, those of the writer's thread
    and the others (synchronous: the parent run, the tables, the summary)."""
    counts = {"all": 0, "sync": 0}
    make = tracking.client

    class Counting:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            attribute = getattr(self._inner, name)
            if not callable(attribute):
                return attribute

            def call(*a, **k):
                counts["all"] += 1
                counts["sync"] += threading.current_thread().name != "mlflow-writer"
                return attribute(*a, **k)
            return call

    tracking.client = lambda uri: Counting(make(uri))
    return counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class local_cluster:
    """`cluster/local.py start` in a private temp dir, on free ports, with its own token; sets
    this process's RAY_ADDRESS and token variables; stops exactly that cluster on exit."""

    def __init__(self, workers: int, worker_cpus: int):
        self.workers, self.worker_cpus = workers, worker_cpus

    def __enter__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")   # unix socket paths must stay short
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=f"{self.temp_dir}/token")
        self.env = env
        ports = [f"--port={_free_port()}", f"--dashboard-port={_free_port()}", f"--client-port={_free_port()}"]
        began = time.monotonic()
        started = subprocess.run([sys.executable, "cluster/local.py", "start", f"--temp-dir={self.temp_dir}", *ports,
                                  f"--workers={self.workers}", f"--worker-cpus={self.worker_cpus}"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if started.returncode != 0:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise RuntimeError(f"cluster/local.py start failed:\n{started.stdout}\n{started.stderr}")
        state = json.loads(Path(self.temp_dir, "defect-sweeps-cluster.json").read_text())
        print(f"local cluster: head + {self.workers} x {self.worker_cpus} CPU at {state['gcs_address']} "
              f"(started in {time.monotonic() - began:.0f} s)", flush=True)
        os.environ.update(RAY_ADDRESS=state["gcs_address"], RAY_AUTH_MODE="token",
                          RAY_AUTH_TOKEN_PATH=env["RAY_AUTH_TOKEN_PATH"])
        return state

    def __exit__(self, *exc):
        subprocess.run([sys.executable, "cluster/local.py", "stop", f"--temp-dir={self.temp_dir}"], cwd=REPO,
                       env=self.env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)

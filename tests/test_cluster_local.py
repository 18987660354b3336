"""Real local Ray clusters started by `cluster/local.py`: a sweep submitted with `ray job submit`
to a head + 2 worker nodes, and a sweep on the fake autoscaling cluster that grows from zero
worker nodes and shrinks back.

Each test starts its own cluster in a private temp dir, on free ports and with its own token
file, and stops exactly that cluster in `finally` (never `ray stop`, which would kill other
Ray runtimes on the machine). Nothing is mocked: real raylets, real Tune trials running the
detector's `tiny` preset on the embedded dataset, a real MLflow SQLite store.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RAY = str(Path(sys.executable).parent / "ray")
CATEGORIES = ("weave", "bolt")      # one texture, one object of the embedded dataset
ROWS = ("2", "8")                   # Table 4 rows: the DTD baseline and the full method
ABLATION_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_cluster(verb: str, *flags: str):
    """`cluster/local.py <verb>` on free ports in a short private temp dir; yields (state, env)
    where env is what a client needs (RAY_AUTH_MODE=token and this cluster's token file)."""
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")   # unix socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=f"{temp_dir}/token")
    ports = [f"--port={free_port()}", f"--dashboard-port={free_port()}", f"--client-port={free_port()}"]
    try:
        started = subprocess.run([PYTHON, "cluster/local.py", verb, f"--temp-dir={temp_dir}", *ports, *flags],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, f"cluster/local.py {verb} failed:\n{started.stdout}\n{started.stderr}"
        assert "export RAY_AUTH_MODE=token" in started.stdout
        state = json.loads(Path(temp_dir, "defect-sweeps-cluster.json").read_text())
        yield state, env
    finally:
        stopped = subprocess.run([PYTHON, "cluster/local.py", "stop", f"--temp-dir={temp_dir}"], cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=120)
        print(stopped.stdout, stopped.stderr)
        if os.environ.get("KEEP_RAY_TEMP"):
            print("kept", temp_dir)
        else:
            shutil.rmtree(temp_dir, ignore_errors=True)


def alive_nodes(state: dict, env: dict) -> list[dict]:
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{state['dashboard']}/api/v0/nodes?limit=1000",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        nodes = json.loads(response.read())["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


def sweep_flags(tmp_path: Path, *extra: str, data: str = "embedded") -> list[str]:
    """Absolute storage, tracking store and dataset: a job's cwd is a temporary copy of the repo."""
    return ["ablation", "--data", data, "--categories", *CATEGORIES, "--rows", *extra, "--preset", "tiny",
            "--storage", str(tmp_path / "storage"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]


def check_mlflow(tmp_path: Path, n_trials: int, rows: tuple[str, ...], data: str = "embedded") -> None:
    """1 parent; one finished child per trial with params, final metrics and a checkpoint;
    the parent's tables with a value in every category x row cell."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, "tags.sweep_role = 'parent'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == n_trials
    for child in children:
        assert child.info.status == "FINISHED", child.info.run_name
        assert child.data.params["category"] in CATEGORIES
        assert child.data.params["preset"] == "tiny" and child.data.params["data"] == data
        assert child.data.params["dataset"] == ("embedded" if data == "embedded" else "mvtec")
        for metric in ABLATION_METRICS:
            value = child.data.metrics.get(metric)
            assert value is not None or child.data.tags.get(metric) == "unavailable", (child.info.run_name, metric)
        assert "epoch" in child.data.metrics
        assert client.get_metric_history(child.info.run_id, "epoch"), "per-epoch metrics are logged"
        assert client.list_artifacts(child.info.run_id, "checkpoint"), f"{child.info.run_name}: no checkpoint"

    version = Path(client.download_artifacts(parent.info.run_id, "tables/LATEST", str(tmp_path))).read_text().strip()
    for metric in ABLATION_METRICS:
        path = client.download_artifacts(parent.info.run_id, f"tables/{version}/ablation_{metric}.json",
                                         str(tmp_path))
        table = json.loads(Path(path).read_text())
        columns, data = table["columns"], table["data"]
        by_category = {row[0]: dict(zip(columns[1:], row[1:])) for row in data}
        assert set(by_category) == {*CATEGORIES, "mean"}, by_category.keys()
        for category, cells in by_category.items():
            for row in rows:
                value = cells[f"row {row}"]
                assert value not in ("–", None, ""), f"{metric}: cell ({category}, row {row}) is empty"


def test_job_submit_sweep_on_local_multinode_cluster(tmp_path):
    """Head (no CPUs) + 2 worker nodes from cluster/local.py; the README's `ray job submit`
    with token auth runs a 4-trial ablation sweep on a user's dataset at an absolute path (the
    job's working dir is a copy of the repo; the workers read the folder itself); MLflow then
    holds the whole sweep."""
    from user_dataset import write_user_dataset

    data = str(write_user_dataset(tmp_path / "dataset", categories=CATEGORIES))
    with local_cluster("start", "--workers=2", "--worker-cpus=1") as (state, env):
        nodes = alive_nodes(state, env)
        assert len(nodes) == 3 and sum(n["is_head_node"] for n in nodes) == 1
        cpus = sorted(n["resources_total"].get("CPU", 0) for n in nodes if not n["is_head_node"])
        head_cpus = [n["resources_total"].get("CPU", 0) for n in nodes if n["is_head_node"]]
        assert head_cpus == [0] and cpus == [1, 1], "trials must land on the worker nodes only"
        # token auth is on: the dashboard refuses a request without the token
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{state['dashboard']}/api/version", timeout=10)
        assert refused.value.code == 401

        began = time.monotonic()
        job = subprocess.run(
            [RAY, "job", "submit", "--working-dir", ".", "--", "python", "-m", "platform.sweep",
             *sweep_flags(tmp_path, *ROWS, data=data)],
            cwd=REPO, env={**env, "RAY_ADDRESS": state["dashboard"]}, capture_output=True, text=True,
            timeout=360)
        print(f"ray job submit: {time.monotonic() - began:.1f} s\n{job.stdout[-4000:]}\n{job.stderr[-2000:]}")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        assert f"{len(CATEGORIES) * len(ROWS)}/{len(CATEGORIES) * len(ROWS)} trials finished" in job.stdout
        # the dashboard (started from the repo root, where platform/ shadows the stdlib) is still up
        assert len(alive_nodes(state, env)) == 3

    check_mlflow(tmp_path, len(CATEGORIES) * len(ROWS), ROWS, data=data)


def peak_running(tmp_path: Path) -> int:
    """The most trials running at once, from the MLflow children's start and end times (a child
    is created when its trial starts and ended when it finishes)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(experiments, "tags.sweep_role = 'trial'")
    events = sorted([(r.info.start_time, 1) for r in children] + [(r.info.end_time, -1) for r in children],
                    key=lambda e: (e[0], e[1]))   # an end before a start at the same millisecond
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@contextmanager
def worker_nodes_over_time(state: dict, env: dict):
    """Polls the alive worker nodes every second; yields the list of (seconds, count) it fills."""
    samples: list[tuple[float, int]] = []
    stop_polling = threading.Event()
    start = time.monotonic()

    def poll():
        while not stop_polling.is_set():
            try:
                workers = sum(not n["is_head_node"] for n in alive_nodes(state, env))
                samples.append((time.monotonic() - start, workers))
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                pass
            stop_polling.wait(1.0)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while not samples and time.monotonic() < deadline:
            time.sleep(0.2)
        assert samples, "the dashboard's state API never answered"
        assert samples[0][1] == 0, "the fake cluster must start without worker nodes"
        yield samples
    finally:
        stop_polling.set()
        poller.join(timeout=15)
        print("worker nodes over time:", [(round(t), n) for t, n in samples if n] or "none")


# trials long enough (a minute or two each on 2 busy cores) that node start-up does not serialise them
LONG_TINY = ("--set", "epochs=100", "--set", "checkpoint_minutes=1")


def test_sweep_on_fake_autoscaling_cluster(tmp_path):
    """cluster/fake_autoscaling.yaml: the head has no CPUs and there are no workers, so the
    sweep's trials pend; the autoscaler adds worker nodes (up to 3, 1 CPU each), the sweep sizes
    its concurrency from that maximum (published by cluster/local.py), not from the empty cluster
    at start, and runs a trial on every node it adds; every trial finishes, and the idle workers
    are removed again."""
    with local_cluster("autoscale") as (state, env), worker_nodes_over_time(state, env) as samples:
        began = time.monotonic()
        sweep = subprocess.run(
            [PYTHON, "-m", "platform.sweep", *sweep_flags(tmp_path, *ROWS), *LONG_TINY], cwd=REPO,
            env={**env, "RAY_ADDRESS": state["gcs_address"]}, capture_output=True, text=True, timeout=900)
        swept = samples[-1][0] if samples else 0
        print(f"sweep: {time.monotonic() - began:.1f} s\n{sweep.stdout[-4000:]}\n{sweep.stderr[-2000:]}")
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        n_trials = len(CATEGORIES) * len(ROWS)
        assert f"{n_trials}/{n_trials} trials finished" in sweep.stdout
        # 3 one-CPU worker nodes at most, 1 CPU per trial
        assert "concurrency: 3 trials at once" in sweep.stdout, sweep.stdout[:2000]

        # idle_timeout_minutes is 0.1: workers go within about 6 s + an update interval
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (samples and samples[-1][0] > swept and samples[-1][1] == 0):
            time.sleep(1)
        peak_nodes = max(n for _, n in samples)
        assert peak_nodes >= 2, "the autoscaler never added more than one worker node for the pending trials"
        assert peak_nodes <= 3, "more workers than cluster/fake_autoscaling.yaml's max_workers"
        assert samples[-1][1] == 0, f"idle workers were not removed: {samples[-5:]}"

    peak = peak_running(tmp_path)
    print(f"peak trials running at once: {peak} (peak worker nodes {peak_nodes})")
    assert peak >= 2, "trials ran one by one although the autoscaler added nodes"
    assert peak == peak_nodes, f"{peak} trials at once on {peak_nodes} one-CPU nodes: a node went unused"
    check_mlflow(tmp_path, n_trials, ROWS)


def test_ddp_sweep_on_fake_autoscaling_cluster(tmp_path):
    """2-worker DDP trials (nested TorchTrainer) on the fake autoscaling cluster from zero
    workers: each trial needs a 0.1-CPU driver plus 2 x 0.5 CPU, so the cluster at its largest
    (3 CPUs) fits 2 at once; the workers' demand is requested from the autoscaler for the whole
    phase and the Train start window is the flag's, so both trials run together."""
    with local_cluster("autoscale") as (state, env), worker_nodes_over_time(state, env) as samples:
        began = time.monotonic()
        sweep = subprocess.run(
            [PYTHON, "-m", "platform.sweep", *sweep_flags(tmp_path, ROWS[1]), *LONG_TINY, "--workers-per-trial", "2",
             "--cpus-per-worker", "0.5", "--worker-start-timeout-minutes", "5"], cwd=REPO,
            env={**env, "RAY_ADDRESS": state["gcs_address"]}, capture_output=True, text=True, timeout=900)
        print(f"sweep: {time.monotonic() - began:.1f} s\n{sweep.stdout[-4000:]}\n{sweep.stderr[-2000:]}")
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        assert f"{len(CATEGORIES)}/{len(CATEGORIES)} trials finished" in sweep.stdout
        assert "concurrency: 2 trials at once" in sweep.stdout, sweep.stdout[:2000]
    peak = peak_running(tmp_path)
    print(f"peak DDP trials running at once: {peak} (peak worker nodes {max(n for _, n in samples)})")
    assert peak == 2, "the DDP trials ran one by one although the cluster could grow to fit both"
    check_mlflow(tmp_path, len(CATEGORIES), ROWS[1:])

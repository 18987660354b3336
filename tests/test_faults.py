"""Fault injection: interrupted, killed or failing sweeps lose nothing and say what happened.

Real Ray and real MLflow throughout: each scenario runs `python -m platform.sweep` (a local Ray
runtime it starts, or the local multi-node cluster of cluster/local.py), injects one fault
into processes this test started (by pid: the driver, its descendants, a node's process group,
an `mlflow server`), and then asserts from the MLflow store itself: run statuses with no
RUNNING run left, one child run per trial, strictly increasing metric steps without gaps, and
complete tables after the sweep is continued. Trials are the detector's `tiny` preset with
more epochs (about half a minute each on 2 cores) or the toy trainer of tests/sweep_toy.py.
Each test prints its figures (trials completed, runs per status, reports re-done after a
restart) for the record.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from platform import tracking

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable
LONG = ["--preset", "tiny", "--set", "epochs=120"]     # ~30-60 s a trial here, a report (and checkpoint) per epoch


def sweep_cmd(tmp_path: Path, *flags: str, uri: str | None = None) -> list[str]:
    return [PYTHON, "-m", "platform.sweep", *flags, "--storage", str(tmp_path / "storage"),
            "--tracking-uri", uri or f"sqlite:///{tmp_path / 'mlflow.db'}"]


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """The driver in its own session, so a signal reaches it alone (as `kill PID` would)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**environment, **(env or {})}, start_new_session=True)


def wait_for(log: Path, pattern: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        assert process.poll() is None, f"the sweep ended (rc {process.returncode}) before {pattern!r}:\n" \
                                       f"{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def wait_reports(uri: str, n: int, timeout: float = 240, name: str | None = None) -> None:
    """Until some child run (or the one named) has logged `n` reports (training is under way,
    checkpoints exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for parent in _parents(uri):
            for child in tracking.children(uri, parent.info.run_id):
                if name in (None, child.info.run_name) and \
                        len(tracking.client(uri).get_metric_history(child.info.run_id, "trainer_s")) >= n:
                    return
        time.sleep(1)
    raise AssertionError(f"no child{' ' + name if name else ''} reached {n} reports in {timeout} s")


def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every live descendant of `pid`."""
    rows = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    table = [line.split(None, 3) for line in rows.splitlines() if line.strip()]
    live = {int(r[0]): (int(r[1]), r[3] if len(r) > 3 else "") for r in table if not r[2].startswith("Z")}
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in live.items() if ppid in frontier and p not in found}
        found.update({p: live[p][1] for p in frontier})
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_all([process.pid, *descendants(process.pid)])
        raise AssertionError(f"the sweep did not end within {timeout} s:\n{log.read_text()[-3000:]}")


def _parents(uri: str) -> list:
    mlflow = tracking.client(uri)
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    return mlflow.search_runs(experiments, "tags.sweep_role = 'parent'") if experiments else []


def store_state(uri: str) -> dict:
    """The sweep's parent, its children by name, and per child its report steps."""
    [parent] = _parents(uri)
    children = tracking.children(uri, parent.info.run_id)
    mlflow = tracking.client(uri)
    steps = {c.info.run_name: [m.step for m in sorted(mlflow.get_metric_history(c.info.run_id, "trainer_s"),
                                                      key=lambda m: m.timestamp)] for c in children}
    return {"parent": parent, "children": {c.info.run_name: c for c in children}, "steps": steps}


def assert_store(uri: str, names: set[str], statuses: dict[str, str] | str, parent_status: str) -> dict:
    """One child per trial with the expected statuses, nothing RUNNING, each child's report steps
    1, 2, 3, ... without a gap: a restarted trial's replayed reports are not logged again, and
    after a driver SIGKILL the resumed trial re-sends those the driver had not logged."""
    state = store_state(uri)
    children = state["children"]
    assert len(children) == len(set(children)) and set(children) <= names, sorted(children)
    assert state["parent"].info.status == parent_status
    for name, child in children.items():
        expected = statuses if isinstance(statuses, str) else statuses.get(name, "?")
        assert child.info.status == expected, (name, child.info.status, expected)
        steps = state["steps"][name]
        assert steps == list(range(1, len(steps) + 1)), (name, steps)
        print(f"{name}: {len(steps)} steps")
    counts: dict[str, int] = {}
    for child in children.values():
        counts[child.info.status] = counts.get(child.info.status, 0) + 1
    print(f"runs per status: parent {state['parent'].info.status}, children {counts}")
    return state


def redone_reports(storage: Path) -> str:
    """Reports run twice (a restart from a checkpoint re-does the reports after it) and the
    training seconds they took: from every attempt's result.json in the sweep's storage
    (reports re-sent from a checkpoint's history are not re-done work)."""
    seen, redone, seconds = set(), 0, 0.0
    for result in sorted(storage.rglob("result.json")):
        trial = result.parent.name
        for line in result.read_text().splitlines():
            report = json.loads(line)
            if "report_index" not in report or report.get("resent"):
                continue
            key = (trial, report["report_index"])
            if key in seen:
                redone += 1
                seconds += float(report.get("time_this_iter_s", 0.0))
            seen.add(key)
    return f"{redone} ({seconds:.1f} s of training)"


def complete_tables(uri: str) -> str:
    state = store_state(uri)
    mlflow = tracking.client(uri)
    version = Path(mlflow.download_artifacts(state["parent"].info.run_id, "tables/LATEST")).read_text().strip()
    text = Path(mlflow.download_artifacts(state["parent"].info.run_id,
                                          f"tables/{version}/ablation_image_AUROC.md")).read_text()
    assert "–" not in text.split("\n", 2)[2], text
    return text


ABLATION = ["ablation", "--categories", "weave", "--rows", "2", "7"]
NAMES = {"weave-src_procedural-s0", "weave-df_copy-lk-src_mvtec-s0"}


# ---------------------------------------------------------------- the reports a resumed trial re-sends

def test_a_resumed_trial_resends_exactly_the_reports_its_driver_had_not_logged(tmp_path):
    """The adapter's bookkeeping without Ray: a checkpoint saved at report 5 holds reports 1-5;
    resumed with the driver's log at 3, the trial re-sends 4 and 5 and goes on at 6."""
    from trainables.ray_adapter import RESENT, _persist, _Reporter

    reporter = _Reporter(None)
    for epoch in range(1, 6):
        with reporter.stamp({"epoch": epoch, "nested": {"dropped": 1}}) as stamped:
            assert stamped["report_index"] == epoch
    _persist({"step": 5}, str(tmp_path), reporter.history)

    resumed = _Reporter(str(tmp_path), logged_through=3)
    assert [(r["report_index"], r["epoch"], r[RESENT]) for r in resumed.unlogged()] == [(4, 4, True), (5, 5, True)]
    with resumed.stamp({"epoch": 6}) as stamped:
        assert stamped["report_index"] == 6
    assert [r["report_index"] for r in _Reporter(str(tmp_path), logged_through=0).unlogged()] == [1, 2, 3, 4, 5]
    # restarted by Tune, whose driver logged the checkpoint's report: only that one, dropped as a replay
    assert [r["report_index"] for r in _Reporter(str(tmp_path)).unlogged()] == [5]
    assert _Reporter(None, logged_through=0).unlogged() == []


# ---------------------------------------------------------------- signals

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_sweep_as_killed_and_the_same_command_completes_it(tmp_path, signum):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    cmd = sweep_cmd(tmp_path, *ABLATION, *LONG)
    driver = start(cmd, log)
    wait_reports(uri, 3)
    os.kill(driver.pid, signum)
    began = time.monotonic()
    rc = finish(driver, log, timeout=120)
    out = log.read_text()
    print(f"{signal.Signals(signum).name}: exit {rc} after {time.monotonic() - began:.1f} s")
    assert rc == 128 + signum, out[-3000:]
    assert "interrupted" in out and "continue it with: python -m platform.sweep ablation --resume" in out
    assert "Tuner.restore" not in out   # Tune's own resume advice would not resume the sweep
    assert_store(uri, NAMES, "KILLED", "KILLED")
    assert not descendants(driver.pid)

    rc = finish(start(cmd, tmp_path / "again.log"), tmp_path / "again.log")
    assert rc == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert_store(uri, NAMES, "FINISHED", "FINISHED")
    complete_tables(uri)
    print(f"trials completed {len(NAMES)}; reports re-done after the restart: {redone_reports(tmp_path / 'storage')}")


def test_gan_stage1_interrupted_starts_no_stage2(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    driver = start(sweep_cmd(tmp_path, "gan", "--categories", "bolt", "--defects", "hole", "--lambdas", "0.1",
                             "--preset", "tiny", "--set", "stage1_kimg=2", "--set", "stage2_kimg=0.016"), log)
    wait_reports(uri, 2)
    os.kill(driver.pid, signal.SIGINT)
    assert finish(driver, log, timeout=120) == 130
    state = assert_store(uri, {"bolt-stage1-s0"}, "KILLED", "KILLED")
    assert set(state["children"]) == {"bolt-stage1-s0"}  # no stage-2 run was started from it
    assert "phase stage2" not in log.read_text()


# ---------------------------------------------------------------- processes killed

def test_sigkill_of_a_trial_worker_resumes_it_in_the_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    driver = start(sweep_cmd(tmp_path, *ABLATION, *LONG, "--max-concurrent", "1"), log)
    wait_reports(uri, 3)
    trials = [pid for pid, cmd in descendants(driver.pid).items() if "ray::" in cmd and "IDLE" not in cmd
              and ("ImplicitFunc" in cmd or "run_trial" in cmd)]
    assert trials, descendants(driver.pid)
    kill_all(trials)
    assert finish(driver, log) == 0, log.read_text()[-3000:]
    assert_store(uri, NAMES, "FINISHED", "FINISHED")
    complete_tables(uri)
    print(f"killed {len(trials)} trial worker(s); reports re-done: {redone_reports(tmp_path / 'storage')}")


def test_a_checkpoint_cut_short_in_storage_is_passed_over_on_resume(tmp_path):
    """A trial killed while Ray copied its checkpoint into storage leaves a newer folder with a
    file cut short: the sweep resumes from the newest whole one (a fresh-clone run of the next
    test failed its resumed trial on a 1 MiB checkpoint.pt), locally and through a URI."""
    from platform import storage
    from trainables.checkpoint import save_checkpoint
    from trainables.ray_adapter import REPORTS_FILE

    trial = tmp_path / "ablation" / "t"
    folders = [trial / f"checkpoint_{k:06d}" for k in range(4)]
    for k, folder in enumerate(folders):
        save_checkpoint(folder, {"step": k, "w": torch.randn(256, 256)})
        (folder / REPORTS_FILE).write_text(json.dumps([{"report_index": k + 1}]))
        os.utime(folder, (1000 + k, 1000 + k))  # each folder newer than the one before
    whole = (folders[1] / "checkpoint.pt").read_bytes()
    (folders[2] / "checkpoint.pt").write_bytes(whole[:len(whole) // 2])   # cut short
    (folders[3] / REPORTS_FILE).write_text('[{"report_index": 4')           # cut short
    for root in (str(tmp_path), f"file://{tmp_path}"):
        assert storage.latest_checkpoint(root, "ablation", "t").endswith("checkpoint_000001"), root
    (folders[3] / REPORTS_FILE).unlink()  # not copied yet
    assert storage.latest_checkpoint(str(tmp_path), "ablation", "t").endswith("checkpoint_000001")
    (folders[3] / REPORTS_FILE).write_text("[]")
    assert storage.latest_checkpoint(str(tmp_path), "ablation", "t").endswith("checkpoint_000003")
    assert storage.latest_checkpoint(str(tmp_path), "ablation", "other") is None


def test_driver_sigkill_then_resume_runs_only_the_unfinished_trials(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    driver = start(sweep_cmd(tmp_path, *ABLATION, *LONG, "--max-concurrent", "1"), log)
    wait_for(log, r"\[1/2\] \S+: done", driver, timeout=300)  # one trial finished, the other under way
    first = re.search(r"\[1/2\] (\S+): done", log.read_text()).group(1)
    wait_reports(uri, 3, name=(NAMES - {first}).pop())
    sweep_id = re.search(r"^sweep (\S+):", log.read_text(), re.M).group(1)
    orphans = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    kill_all(orphans)  # the local Ray runtime it had started
    status = subprocess.run([PYTHON, "-m", "platform.sweep", "status", sweep_id, "--storage", str(tmp_path / "storage")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    print(status.stdout)
    lines = status.stdout.strip().splitlines()
    assert status.returncode == 0 and len(lines) == 5, status.stdout + status.stderr
    states = {line.split()[0]: line.split()[1] for line in lines[1:3]}
    assert sorted(states.values()) == ["done", "running"]  # the dead driver left its run RUNNING
    assert "checkpoint" in lines[1] and "ago" in lines[2]
    assert lines[-1] == (f"1 unfinished; continue with: python -m platform.sweep ablation --resume {sweep_id} "
                         f"--storage {tmp_path / 'storage'}")
    # a flag that would change the sweep is refused on resume, in one line
    refused = subprocess.run([*sweep_cmd(tmp_path, "ablation", "--resume", sweep_id), "--preset", "paper"],
                             cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: --preset: cannot change")
    again = tmp_path / "again.log"
    rc = finish(start(sweep_cmd(tmp_path, "ablation", "--resume", sweep_id, "--max-concurrent", "2"), again), again)
    assert rc == 0, again.read_text()[-3000:]
    assert "1 of 2 trials already finished" in again.read_text()
    assert_store(uri, NAMES, "FINISHED", "FINISHED")
    complete_tables(uri)
    print(f"reports re-done after the driver was killed: {redone_reports(tmp_path / 'storage')}")


# ---------------------------------------------------------------- trial errors

def test_bad_input_fails_at_once_and_a_crash_is_retried(tmp_path):
    """The toy trainer through the runner: a UserInputError only the trainer sees fails its trial
    on the first attempt; a RuntimeError (a crash) is retried from the last checkpoint."""
    import ray

    from platform import runner, storage
    from platform.resources import Resources
    from search_spaces.base import Phase, SweepPlan, TrialSpec, validate_plan

    toy = "sweep_toy:train_toy"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad = TrialSpec(toy, "bad", "g", "weave", 0, {}, {"user_error": "fail_at=many: expected int",
                                                      "attempts": str(tmp_path / "bad-attempts")})
    crash = TrialSpec(toy, "crash", "g", "weave", 0, {}, {"epochs": 4, "fail_at": 2,
                                                          "marker": str(tmp_path / "crashed"),
                                                          "attempts": str(tmp_path / "crash-attempts")})
    plan = validate_plan(SweepPlan("ablation", "tiny", "embedded", "embedded", {"toy": 1},
                                   (Phase("trials", (bad, crash)),)))
    resources = Resources(workers=1, gpus_per_trial=0, cpus_per_worker=1, max_concurrent=None)
    sweep = runner.Sweep(plan, {}, storage.make_sweep_id(plan), resources, str(tmp_path / "storage"), uri, "toy")
    path = os.pathsep.join([str(TESTS), str(REPO)])
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        outcome = runner.run(sweep)
    finally:
        ray.shutdown()
    assert (outcome.finished, outcome.failed) == (1, 1)
    assert (tmp_path / "bad-attempts").read_text().count("start") == 1     # not retried
    assert (tmp_path / "crash-attempts").read_text().count("start") == 2   # retried once, then done
    state = assert_store(uri, {"bad", "crash"}, {"bad": "FAILED", "crash": "FINISHED"}, "FAILED")
    assert state["children"]["bad"].data.tags["error"] == "fail_at=many: expected int"
    assert state["steps"]["crash"] == [1, 2, 3, 4]  # the restart's replayed report 3 is not logged twice


# ---------------------------------------------------------------- the tracking store

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen([str(Path(PYTHON).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
                               "--default-artifact-root", str(db.parent / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=open(log, "a"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            tracking.check_store(f"http://127.0.0.1:{port}")
            return server
        except Exception:
            time.sleep(1)
    raise AssertionError(f"mlflow server did not start:\n{log.read_text()[-2000:]}")


def stop_server(server: subprocess.Popen) -> None:
    kill_all([server.pid, *descendants(server.pid)])
    server.wait()


def test_tracking_server_outage_of_30_s_is_survived(tmp_path):
    port = free_port()
    db = tmp_path / "server.db"
    server = mlflow_server(db, port, tmp_path / "server.log")
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "sweep.log"
    driver = start(sweep_cmd(tmp_path, *ABLATION, *LONG, uri=uri), log)
    try:
        wait_reports(uri, 3)
        stop_server(server)
        time.sleep(30)
        server = mlflow_server(db, port, tmp_path / "server.log")
        assert finish(driver, log) == 0, log.read_text()[-3000:]
        # MLflow's client retries a refused request itself for a while; past that, the writer
        # retries and says so. Either way nothing is lost:
        print(f"writer saw the outage: {'MLflow store unreachable' in log.read_text()}")
        state = assert_store(uri, NAMES, "FINISHED", "FINISHED")
        assert all(len(steps) == 120 for steps in state["steps"].values())  # a report per epoch, the last one final
        complete_tables(uri)
    finally:
        stop_server(server)


@pytest.mark.parametrize("uri, message", [
    ("bogus://x", "unknown scheme 'bogus'"),
    ("http://127.0.0.1:9", "does not answer"),
])
def test_a_store_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, uri, message):
    done = subprocess.run(sweep_cmd(tmp_path, *ABLATION, "--preset", "tiny", uri=uri), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr and done.stderr.startswith("error: --tracking-uri")
    assert not (tmp_path / "storage").exists()


# ---------------------------------------------------------------- the local multi-node cluster

def test_sigterm_from_ray_job_stop_ends_the_sweep_as_killed(tmp_path):
    from test_cluster_local import RAY, local_cluster

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with local_cluster("start", "--workers=2", "--worker-cpus=1") as (state, env):
        env = {**env, "RAY_ADDRESS": state["dashboard"]}
        submitted = subprocess.run([RAY, "job", "submit", "--no-wait", "--working-dir", ".", "--",
                                    "python", "-m", "platform.sweep", *sweep_cmd(tmp_path, *ABLATION, *LONG)[3:]],
                                   cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
        wait_reports(uri, 3)
        stopped = subprocess.run([RAY, "job", "stop", job], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=180)
        logs = subprocess.run([RAY, "job", "logs", job], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60).stdout
        print(stopped.stdout[-1000:], logs[-2000:])
        assert "SIGTERM: stopping the sweep" in logs and "continue it with:" in logs
    assert_store(uri, NAMES, "KILLED", "KILLED")


def test_a_worker_node_stopped_mid_sweep_its_trials_finish_elsewhere(tmp_path):
    from test_cluster_local import local_cluster

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "sweep.log"
    with local_cluster("start", "--workers=2", "--worker-cpus=1") as (state, env):
        driver = start(sweep_cmd(tmp_path, *ABLATION, *LONG), log,
                       env={"RAY_ADDRESS": state["gcs_address"], "RAY_AUTH_MODE": "token",
                            "RAY_AUTH_TOKEN_PATH": env["RAY_AUTH_TOKEN_PATH"]})
        wait_reports(uri, 3)
        node = state["process_groups"][2]           # the second worker node's processes
        rows = subprocess.run(["ps", "-A", "-o", "pid=,pgid="], capture_output=True, text=True).stdout.split("\n")
        group = [int(r.split()[0]) for r in rows if r.strip() and int(r.split()[1]) == node]
        kill_all([pid for pid in group for pid in (pid, *descendants(pid))])
        assert finish(driver, log) == 0, log.read_text()[-3000:]
    assert_store(uri, NAMES, "FINISHED", "FINISHED")
    complete_tables(uri)
    print(f"stopped a node of {len(group)} processes; reports re-done: {redone_reports(tmp_path / 'storage')}")

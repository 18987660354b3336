"""Start and stop a local Ray cluster on this machine: a head plus N worker nodes, or a head
whose autoscaler adds and removes fake worker nodes (Ray's fake multi-node provider).

    .venv/bin/python cluster/local.py start [--workers 2] [--worker-cpus 2] [--worker-gpus 0]
    .venv/bin/python cluster/local.py autoscale [--config cluster/fake_autoscaling.yaml]
    .venv/bin/python cluster/local.py env       # print the export lines again
    .venv/bin/python cluster/local.py stop

Every node is a real `ray start` (raylet, object store, dashboard agent) under one temp dir
(`--temp-dir`; worker nodes in sub-folders of their own), with free ports where several nodes
would collide; the head runs the dashboard on 127.0.0.1 with token authentication on. `stop`
ends only the processes this script started: it records the process group of each `ray
start` in the temp dir and signals those groups and their descendants. It never runs `ray
stop`, which kills every Ray process on the machine, other people's runtimes included.

This is for trying multi-node scheduling, `ray job submit` and autoscaling on one machine; it
is not a way to pool several machines (use `cluster/aws.yaml` or `cluster/kuberay/` for that).
Run it from the repo root: the nodes then start there, as they do under `ray job submit`,
which is where `platform/__init__.py` has to stand in for the standard `platform` module.
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FAKE_AUTOSCALING_CONFIG = REPO / "cluster" / "fake_autoscaling.yaml"
DEFAULT_TEMP_DIR = Path(tempfile.gettempdir()) / "ray-defect-sweeps"
STATE_FILE = "defect-sweeps-cluster.json"   # inside the temp dir: what `stop` and `env` read
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"   # where Ray looks without RAY_AUTH_TOKEN_PATH


class ClusterError(Exception):
    """A step of starting or stopping failed; the message says which and where to look."""


# ---------------------------------------------------------------- helpers

def ray_cli() -> str:
    """The `ray` console script of the interpreter running this file (the project's venv)."""
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def python_cli() -> str:
    """This interpreter as the user would type it from the repo root."""
    path = Path(sys.executable)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def ensure_token(env: dict) -> Path | None:
    """Make sure a token exists for token auth; returns its file (None: RAY_AUTH_TOKEN is set).

    Same format as `ray get-auth-token --generate`, but honours RAY_AUTH_TOKEN_PATH, so a test
    or a second cluster can keep its own token instead of the user's ~/.ray/auth_token.
    """
    if env.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_PATH).expanduser()
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path


def read_token(env: dict, token_path: str | None) -> str:
    return env.get("RAY_AUTH_TOKEN") or Path(token_path).read_text().strip()


def node_ip() -> str:
    """The address Ray picks for nodes on this machine (what the GCS address is built from)."""
    import ray.util   # imported here: `stop` and `env` need no Ray import

    return ray.util.get_node_ip_address()


def dashboard_get(url: str, token: str, timeout: float = 5) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def alive_nodes(dashboard: str, token: str) -> list[dict]:
    """Alive nodes from the dashboard's state API (also proves the dashboard is up)."""
    reply = dashboard_get(f"{dashboard}/api/v0/nodes?limit=1000", token)
    return [node for node in reply["data"]["result"]["result"] if node["state"] == "ALIVE"]


def wait_for_nodes(dashboard: str, token: str, count: int, timeout_s: float, log_dir: Path) -> None:
    """Block until the dashboard answers and reports `count` alive nodes."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            nodes = alive_nodes(dashboard, token)
            if len(nodes) >= count:
                return
            last = f"{len(nodes)} of {count} nodes alive"
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            last = f"dashboard not answering ({error})"
        time.sleep(1)
    raise ClusterError(f"cluster not ready after {timeout_s:.0f} s: {last}; logs in {log_dir}")


def ray_start(args: list[str], env: dict, log: Path) -> int:
    """Run one `ray start` in its own process group and return that group's id.

    The daemons it spawns (GCS, raylet, dashboard, agents, autoscaler) stay in the group after
    `ray start` returns, which is how `stop` finds exactly this cluster's processes.
    """
    with open(log, "ab") as out:
        process = subprocess.Popen([ray_cli(), "start", *args], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        code = process.wait()
    if code != 0:
        raise ClusterError(f"`ray start {' '.join(args)}` exited with {code}; see {log}")
    return process.pid


def base_env() -> dict:
    """Environment of every node, inherited by job drivers and workers."""
    # RAY_JOB_STOP_WAIT_TIME_S: `ray job stop` sends SIGTERM and, by default, SIGKILL 3 s later;
    # a sweep needs longer to end its trials and mark its runs KILLED (docs/platform.md §5)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", RAY_JOB_STOP_WAIT_TIME_S="60")
    env.pop("RAY_ADDRESS", None)   # a stale address would make `ray start --head` join it
    # A job's entrypoint `python -m platform.sweep ...` must find this interpreter (the
    # project's venv), not whichever `python` comes first on the caller's PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def head_args(args, resources: dict) -> list[str]:
    """`ray start --head` flags shared by `start` and `autoscale`."""
    flags = ["--head", f"--port={args.port}", f"--temp-dir={args.temp_dir}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={args.dashboard_port}",
             f"--ray-client-server-port={args.client_port}", *node_args(args, resources)]
    return flags


def node_args(args, resources: dict) -> list[str]:
    """Flags every node on this machine needs so that several can share it.

    Port 0 means "any free port": several raylets on one machine (and other people's Ray
    runtimes) would otherwise collide on the dashboard agent's default 52365 and on the
    shared worker port range.
    """
    resources = dict(resources)
    flags = [f"--num-cpus={resources.pop('CPU', 0):g}", f"--num-gpus={resources.pop('GPU', 0):g}",
             f"--object-store-memory={int(resources.pop('object_store_memory', args.object_store_mb * 2**20))}",
             "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0",
             "--disable-usage-stats"]
    if resources:
        flags.append(f"--resources={json.dumps(resources)}")
    return flags


def write_state(temp_dir: Path, state: dict) -> None:
    (temp_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def read_state(temp_dir: Path) -> dict:
    path = temp_dir / STATE_FILE
    if not path.exists():
        raise ClusterError(f"no cluster started by this script in {temp_dir} ({path} is missing)")
    return json.loads(path.read_text())


def print_env(state: dict) -> None:
    """The lines a user pastes into a shell to reach the cluster."""
    token_note = (f"export RAY_AUTH_TOKEN_PATH={state['token_path']}"
                  if state["token_path"] and Path(state["token_path"]) != DEFAULT_TOKEN_PATH
                  else f"# token: {state['token_path'] or '$RAY_AUTH_TOKEN'}")
    print(f"""\
# Ray cluster in {state['temp_dir']}: dashboard {state['dashboard']} (token auth)
export RAY_API_SERVER_ADDRESS={state['dashboard']}   # ray job submit / status / logs / stop
export RAY_ADDRESS={state['gcs_address']}   # drivers started on this machine
export RAY_AUTH_MODE=token
{token_note}
# stop: {python_cli()} cluster/local.py stop --temp-dir {state['temp_dir']}""")
    if state["kind"] == "static":
        print("# run: ray job submit --working-dir . -- python -m platform.sweep ablation --preset tiny "
              "--storage <abs path> --tracking-uri sqlite:///<abs path>/mlflow.db")
    else:   # fake nodes share the head's session dir: `ray job submit --working-dir` breaks there
        print(f"# run: {python_cli()} -m platform.sweep ablation --preset tiny   (directly, not as a job)")


# ---------------------------------------------------------------- verbs

def start(args) -> dict:
    """Head (no CPUs by default, so work lands on workers as on a real cluster) + N workers."""
    temp_dir = prepare_temp_dir(args)
    env = base_env()
    token_path = ensure_token(env)
    log = temp_dir / "local-cluster.log"
    gcs_address = f"{node_ip()}:{args.port}"
    state = {"kind": "static", "temp_dir": str(temp_dir), "gcs_address": gcs_address,
             "dashboard": f"http://127.0.0.1:{args.dashboard_port}",
             "token_path": str(token_path) if token_path else None, "process_groups": []}
    try:
        state["process_groups"].append(ray_start(head_args(args, {"CPU": args.head_cpus}), env, log))
        write_state(temp_dir, state)
        worker = {"CPU": args.worker_cpus, "GPU": args.worker_gpus, **json.loads(args.worker_resources)}
        for k in range(1, args.workers + 1):
            # Each worker node gets a temp dir of its own: nodes sharing one session dir share
            # `runtime_resources/`, and a worker's runtime-env agent then unpacks the job's
            # --working-dir again into the folder the head's job driver runs in, replacing it
            # under the driver (FileNotFoundError from os.getcwd(); seen with 2 workers).
            node_dir = temp_dir / f"w{k}"
            state["process_groups"].append(ray_start(
                [f"--address={gcs_address}", f"--temp-dir={node_dir}", *node_args(args, worker)], env, log))
            write_state(temp_dir, state)
        wait_for_nodes(state["dashboard"], read_token(env, state["token_path"]), 1 + args.workers,
                       args.timeout, temp_dir / "session_latest" / "logs")
    except BaseException:
        stop_processes(state, grace_s=5)
        raise
    return state


def autoscale(args) -> dict:
    """A head whose autoscaler launches fake worker nodes (processes on this machine) for
    pending work and removes them when idle, following the node types in `--config`."""
    temp_dir = prepare_temp_dir(args)
    env = base_env()
    token_path = ensure_token(env)
    # The fake provider's workers dial `provider.gcs_address` (default: port 6379).
    gcs_address = f"{node_ip()}:{args.port}"
    config = yaml.safe_load(Path(args.config).read_text())
    config["provider"]["gcs_address"] = gcs_address
    config_path = temp_dir / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    head_type = config["available_node_types"][config["head_node_type"]]
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S=env.get("AUTOSCALER_UPDATE_INTERVAL_S", "1"))
    state = {"kind": "fake-autoscaling", "temp_dir": str(temp_dir), "gcs_address": gcs_address,
             "dashboard": f"http://127.0.0.1:{args.dashboard_port}",
             "token_path": str(token_path) if token_path else None, "process_groups": []}
    try:
        state["process_groups"].append(ray_start(
            [*head_args(args, head_type.get("resources", {})), f"--autoscaling-config={config_path}"],
            env, temp_dir / "local-cluster.log"))
        write_state(temp_dir, state)
        wait_for_nodes(state["dashboard"], read_token(env, state["token_path"]), 1, args.timeout,
                       temp_dir / "session_latest" / "logs")
        publish_node_types(gcs_address, config, env)
    except BaseException:
        stop_processes(state, grace_s=5)
        raise
    return state


def publish_node_types(gcs_address: str, config: dict, env: dict) -> None:
    """Put the config's node types (resources, min and max count) into the GCS as Ray's
    `ClusterConfig`, where `ray._private.state.get_max_resources_from_cluster_config()` reads
    what the cluster can grow to: the sweep sizes its concurrency from it, Train V2 refuses
    worker groups that could never fit. Ray 2.60's v1 autoscaler, which the fake provider
    runs, does not publish it itself."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_AUTH")})  # this process's client
    groups = []
    for name, node_type in config["available_node_types"].items():
        head = name == config["head_node_type"]
        # the proto's counts are integers: logical resources below 1 (a share of a GPU) are dropped
        resources = {k: int(v) for k, v in node_type.get("resources", {}).items() if int(v) > 0}
        groups.append(autoscaler_pb2.NodeGroupConfig(
            name=name, resources=resources, min_count=1 if head else node_type.get("min_workers", 0),
            max_count=1 if head else node_type.get("max_workers", config.get("max_workers", 0))))
    cluster = autoscaler_pb2.ClusterConfig(node_group_configs=groups)
    GcsClient(address=gcs_address).report_cluster_config(cluster.SerializeToString())


def prepare_temp_dir(args) -> Path:
    temp_dir = Path(args.temp_dir).resolve()
    if (temp_dir / STATE_FILE).exists():
        raise ClusterError(f"a cluster from this script may still run in {temp_dir}: "
                           f"`cluster/local.py stop --temp-dir {temp_dir}` first")
    # Unix socket paths under the temp dir must stay below ~107 bytes.
    if len(str(temp_dir)) > 36:
        raise ClusterError(f"--temp-dir {temp_dir}: use a path of at most 36 characters "
                           f"(Ray's unix sockets live under it)")
    temp_dir.mkdir(parents=True, exist_ok=True)
    args.temp_dir = str(temp_dir)
    return temp_dir


def process_table() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, name) of every live process, from `ps` (Linux and macOS); no zombies."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,pgid=,stat=,comm="], capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split(None, 4) for line in out.splitlines() if line.strip()]
    return [(int(pid), int(ppid), int(pgid), Path(comm.strip()).name)
            for pid, ppid, pgid, stat, comm in rows if not stat.startswith("Z")]


def cluster_processes(groups: set[int]) -> dict[int, str]:
    """{pid: name} of the processes in the recorded groups and all their descendants (Ray
    worker processes get a process group of their own, but they are children of a raylet)."""
    table = process_table()
    found = {pid: name for pid, _, pgid, name in table if pgid in groups}
    while children := {pid: name for pid, ppid, _, name in table if ppid in found and pid not in found}:
        found.update(children)
    found.pop(os.getpid(), None)
    return found


def stop_processes(state: dict, grace_s: float = 15) -> int:
    """Stop this cluster's processes the way `ray stop` orders it, but only these: raylets
    first (their agents and workers fate-share), then the rest, then the GCS, which others
    report to on the way out (a GCS or autoscaler signalled together with the raylets hangs
    in its shutdown). Each stage gets SIGTERM, then SIGKILL after its share of `grace_s`."""
    groups = set(state["process_groups"])
    stopped = set()
    for stage in ("raylet", "others", "gcs_server"):
        alive = cluster_processes(groups)
        pids = {pid for pid, name in alive.items()
                if stage == name or (stage == "others" and name not in ("raylet", "gcs_server"))}
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s / 3
        while (left := pids & set(cluster_processes(groups))) and time.monotonic() < deadline:
            time.sleep(0.25)
        signal_all(left, signal.SIGKILL)
        stopped |= pids
    signal_all(set(cluster_processes(groups)), signal.SIGKILL)   # anything started meanwhile
    temp_dir = Path(state["temp_dir"])
    for stale in (temp_dir / STATE_FILE, temp_dir / "ray_current_cluster"):
        stale.unlink(missing_ok=True)
    return len(stopped)


def signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- CLI

def parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="cluster/local.py", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--temp-dir", default=str(DEFAULT_TEMP_DIR),
                        help="Ray's temp dir for every node of this cluster; identifies the cluster "
                             "for `stop` (default: %(default)s)")
    starting = argparse.ArgumentParser(add_help=False)
    starting.add_argument("--port", type=int, default=6379, help="GCS port of the head (default: %(default)s)")
    starting.add_argument("--dashboard-port", type=int, default=8265, help="default: %(default)s")
    starting.add_argument("--client-port", type=int, default=10001, help="Ray client server port (default: %(default)s)")
    starting.add_argument("--object-store-mb", type=int, default=512,
                          help="object store per node, MiB (default: %(default)s; every node of a "
                               "local cluster shares this machine's memory)")
    starting.add_argument("--timeout", type=float, default=120, help="seconds to wait for the nodes (default: %(default)s)")

    s = verbs.add_parser("start", parents=[common, starting], help="head + N worker nodes")
    s.add_argument("--workers", type=int, default=2, help="worker nodes (default: %(default)s)")
    s.add_argument("--head-cpus", type=float, default=0,
                   help="logical CPUs of the head (default: %(default)s: trials run on workers)")
    s.add_argument("--worker-cpus", type=float, default=2, help="logical CPUs per worker (default: %(default)s)")
    s.add_argument("--worker-gpus", type=float, default=0,
                   help="GPUs per worker (default: %(default)s; logical only on a machine without them)")
    s.add_argument("--worker-resources", default="{}",
                   help='extra custom resources per worker as JSON, e.g. \'{"trial_driver": 4}\'')

    a = verbs.add_parser("autoscale", parents=[common, starting],
                         help="head with the fake multi-node autoscaler (workers come and go)")
    a.add_argument("--config", default=str(FAKE_AUTOSCALING_CONFIG),
                   help="fake_multinode autoscaling config (default: %(default)s)")

    verbs.add_parser("env", parents=[common], help="print the export lines for a running cluster")
    st = verbs.add_parser("stop", parents=[common], help="stop the cluster this script started")
    st.add_argument("--grace", type=float, default=15, help="seconds before SIGKILL (default: %(default)s)")
    args = parser.parse_args(argv)
    if getattr(args, "workers", 0) < 0:
        parser.error(f"--workers {args.workers}: must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.verb in ("start", "autoscale"):
            state = start(args) if args.verb == "start" else autoscale(args)
            print_env(state)
        elif args.verb == "env":
            print_env(read_state(Path(args.temp_dir)))
        else:
            state = read_state(Path(args.temp_dir))
            print(f"stopped {stop_processes(state, args.grace)} processes of the cluster in {state['temp_dir']}")
    except (ClusterError, json.JSONDecodeError) as error:
        print(f"cluster/local.py {args.verb}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one trial holds on the cluster, and how many trials run at once.

A 1-worker trial runs its loop in the Tune trial itself and holds that trial's CPUs (and GPU
share). A nested trial (N > 1 Train workers) holds a light driver plus N workers, and a driver
whose workers cannot start would retry forever, so concurrency is sized so that drivers and
workers fit together (docs/platform.md §3.4). On an autoscaling cluster the size is what the
cluster can grow to (its node types' max counts), not what is up at start: a cluster that
starts from zero workers would otherwise run one trial at a time. Every function computes and
returns; the sweep's CLI prints. Not here: starting Ray or Tune.
"""

import dataclasses
import math

from trainables.errors import UserInputError

DRIVER_CPU = 0.1            # a nested trial's driver only waits on its TorchTrainer
DRIVER_SHARE = 0.01         # of --driver-resource per driver (cluster configs advertise 16 per node)
MAX_SIZED = 10_000          # a node group without a max count publishes "unbounded"


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
            # drivers on "safe" (on-demand) nodes via a custom resource they advertise
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


    def bundles(self) -> list[dict[str, float]]:
        """The resource shapes one running trial asks the autoscaler for: its trial bundle plus,
        nested, one bundle per Train worker (the placement group its controller will request)."""
        if not self.nested:
            return [self.trial_bundle()]
        worker = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_trial else {})}
        return [self.trial_bundle()] + [dict(worker) for _ in range(self.workers)]


@dataclasses.dataclass
class Sizing:
    resources: Resources        # what the sweep runs with (workers may be shrunk on a laptop)
    concurrent: int             # trials at once, as planned
    notes: list[str]            # what the CLI should tell the user
    capacity: dict[str, float] = dataclasses.field(default_factory=dict)  # what concurrency was sized on


def autoscaler_ceiling() -> dict[str, float] | None:
    """What the connected cluster can grow to, from the cluster config an autoscaler published
    in the GCS (node groups' resources x max count, Ray's `ClusterConfig`; Train V2 reads the same
    record to refuse worker groups that can never fit). None when nothing is published: Ray
    2.60's v1 autoscaler (`ray up`) does not publish it, so `--cluster-max-cpus/-gpus` say it
    there; `cluster/local.py autoscale` publishes its YAML's node types."""
    import ray._private.state

    try:
        ceiling = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # an older GCS without the record: the same as none published
        return None
    return {k: float(v) for k, v in ceiling.items()} if ceiling else None


def size_for_cluster(requested: Resources, cluster: dict[str, float], on_cluster: bool,
                     ceiling: dict[str, float] | None = None) -> Sizing:
    """Concurrency that fits drivers and workers in what the cluster can grow to (`ceiling`:
    the autoscaler's max, None = the cluster as it is now); a local runtime shrinks workers to
    fit one trial. UserInputError when a local runtime lacks a resource the trials ask for."""
    resources = dataclasses.replace(requested)
    notes = []
    capacity = dict(cluster)
    if ceiling:
        capacity.update({k: max(cluster.get(k, 0.0), v) for k, v in ceiling.items()})
    fits = min(resources.fits(capacity), MAX_SIZED)
    if fits < 1 and resources.nested and not on_cluster:
        # a laptop: share its cores among the workers rather than wait for CPUs that never come
        resources.cpus_per_worker = round((cluster.get("CPU", 1) - DRIVER_CPU) / resources.workers, 3)
        fits = resources.fits(cluster)
        notes.append(f"{resources.workers} workers share this machine's {cluster.get('CPU', 0):g} CPUs "
                     f"({resources.cpus_per_worker:g} CPU each)")
    if resources.max_concurrent is None:
        if resources.nested or ceiling:
            resources.max_concurrent = max(1, fits)
        # 1-worker trials without a known ceiling: Tune schedules what fits; an autoscaler sees
        # the pending rest (grid phases keep up to 200 trials pending, TUNE_MAX_PENDING_TRIALS_PG)
    elif resources.nested and resources.max_concurrent > max(fits, 1):
        notes.append(f"--max-concurrent {resources.max_concurrent} nested trials, but the cluster fits {fits} "
                     f"drivers plus workers{' at its largest' if ceiling else ' now'}; relying on more nodes "
                     f"(worker start-up times out and fails rather than hangs)")
    missing = [k for k in resources.need() if k not in capacity]
    if missing and not on_cluster:
        raise UserInputError(f"this machine's local Ray runtime has no {', '.join(missing)}; drop "
                             f"--driver-resource / --gpus-per-trial, or run on a cluster that has them")
    if missing:
        notes.append(f"no node of the cluster has {', '.join(missing)}{'' if ceiling else ' now'}; trials wait for "
                     f"a node that has")
    if resources.fits(cluster) < 1:
        notes.append(f"no trial fits the cluster now ({fmt(resources.need())} per trial, cluster {fmt(cluster)}); "
                     f"trials wait for the autoscaler to add nodes")
    return Sizing(resources, resources.max_concurrent or max(fits, 1), notes, capacity)


def fmt(resources: dict[str, float]) -> str:
    keys = [k for k in resources if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store",
                                                                              "accelerator_type"))]
    keys = [k for k in keys if resources.get(k)]
    return ", ".join(f"{resources[k]:g} {k}" for k in keys) or "nothing"

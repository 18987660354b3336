"""Ray and Tune for a sweep: the connection, and one Tune experiment per phase of a plan.

`connect_ray` attaches to `$RAY_ADDRESS` or starts a local runtime (dashboard on: Train V2 needs
its State API). `run_phase` turns a phase's trials, each carrying its whole flat config, into
a Tuner (a grid over explicit trials, or an Optuna study with ASHA) and restores it when the
phase's experiment already exists in the sweep's storage. Not here: MLflow (the tracking
callback is handed in) and the order of phases (platform/runner.py).
"""

import os

from ray.tune import Callback

from platform import storage
from platform.resources import Resources, fmt

CHECKPOINTS_KEPT = 1   # resume needs only the newest, and a paper-preset checkpoint is 1.4 GB


def connect_ray() -> tuple[bool, str]:
    """$RAY_ADDRESS when set (a cluster, or a `ray job`), else a new local runtime with the
    dashboard. Never `ray.init()` without an address: it would attach to whatever cluster this
    machine last started (docs/platform.md §8). Returns (started here, a line saying where)."""
    import ray

    # Tune warns on every forced experiment snapshot, which `num_to_keep` causes by design
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic CSV and TensorBoard loggers write (and fsync) every result in the driver's
    # event loop, which delays every trial's next report; run_phase keeps the JSON one (result.json)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():  # a caller (a notebook, a test) already connected this process
        return False, f"using this process's Ray connection ({fmt(ray.cluster_resources())})"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return False, f"connected to the Ray cluster at {address}"
    context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                       logging_level="WARNING")
    return True, (f"started a local Ray runtime ({fmt(ray.cluster_resources())}); dashboard: "
                  f"http://{context.dashboard_url}")


def tune_trials(trials, resources: Resources, train_storage: str, resume: dict[str, str | None],
                logged: dict[str, int], retries: int, worker_start_timeout_s: float = 600.0,
                prune_checkpoints: bool = False) -> list[dict]:
    """Each trial's Tune config: its flat trainer config as the plan built it, how to run it, the
    checkpoint it resumes from when an earlier run of the sweep left one, the last step its
    child run logged then (`logged`: the reports it need not re-send), and whether it deletes its
    older checkpoints itself (`prune_checkpoints`, see run_phase)."""
    from trainables.ray_adapter import trial_config

    return [{**trial_config(t.method, t.config, name=t.name, group=t.group, params=labels(t),
                            workers=resources.workers, cpus_per_worker=resources.cpus_per_worker,
                            gpus_per_worker=resources.gpus_per_worker, train_storage=train_storage,
                            max_failures=retries, controller_failure_limit=retries,
                            worker_start_timeout_s=worker_start_timeout_s,
                            prune_checkpoints=prune_checkpoints),
             "category": t.category, "seed": t.seed, "resume_from": resume.get(t.name),
             "logged_through": logged.get(t.name, 0)} for t in trials]


def labels(trial) -> dict:
    """A trial's MLflow labels: the plan's, plus `needs`, the trials whose checkpoints it starts from."""
    return {**trial.params, **({"needs": ",".join(trial.needs)} if trial.needs else {})}


def run_phase(sweep_storage: str, phase, trials, resources: Resources, concurrent: int, callback,
              resume: dict[str, str | None], logged: dict[str, int], retries: int, worker_start_timeout_s: float = 600.0,
              demand: bool = False):
    """One Tune experiment under the sweep's storage: a grid over the phase's unfinished trials
    (a new experiment each run of the sweep, `<phase>`, `<phase>.attempt2`, ...: the trials carry
    their own resume pointers), or an Optuna study, restored when it exists (its searcher holds
    the study). With `demand` (a cluster), the autoscaler is asked for the running trials'
    resources for the whole phase (`AutoscalerDemand`). Returns Tune's ResultGrid.

    Storage keeps each trial's newest checkpoint only. In an Optuna phase Tune deletes the older
    ones (`num_to_keep`), and so snapshots the whole experiment state on every trial checkpoint,
    because `Tuner.restore` reads it. A grid phase never restores Tune's state (each run of the
    sweep is a new experiment, and its trials find their checkpoints themselves). There Tune
    keeps every checkpoint it is told of and each trial deletes its previous one once a newer
    one is reported (`prune_checkpoints`): a snapshot per checkpoint costs the driver time in
    proportion to the trials (docs/platform.md §3.8)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from trainables.ray_adapter import run_trial

    grid = phase.search is None
    configs = tune_trials(trials, resources, storage.join(sweep_storage, "train"), resume, logged, retries,
                          worker_start_timeout_s, prune_checkpoints=grid)
    trainable = tune.with_resources(run_trial, resources.trial_bundle())
    total = len(trials) if grid else phase.search.num_samples
    asked = AutoscalerDemand(resources.bundles(), concurrent, total) if demand else None
    callbacks = [callback] + ([asked] if asked else [])  # Tune appends its own reporter to this list
    if grid:
        param_space = {"trial": _Shared(tune.grid_search(configs))}
        # reusing trial actors keeps torch imported and the decoded data cached across trials
        # (a fresh actor costs seconds per trial); loops seed themselves from their config
        tune_config = tune.TuneConfig(max_concurrent_trials=resources.max_concurrent,
                                      reuse_actors=not resources.nested,
                                      trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    else:
        param_space, tune_config = _search_setup(phase.search, configs[0], concurrent)
    path = storage.join(sweep_storage, phase.name)
    if not grid and tune.Tuner.can_restore(path):
        print(f"phase {phase.name}: resuming {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space, resume_errored=True)
    else:
        name = storage.next_attempt(sweep_storage, phase.name) if grid else phase.name
        resuming = sum(bool(resume.get(t.name)) for t in trials)
        print(f"phase {phase.name}: {total} trials"
              + (f" ({resuming} from their last checkpoint)" if resuming else ""))
        run_config = tune.RunConfig(
            name=name, storage_path=sweep_storage, callbacks=[*callbacks, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if grid else CHECKPOINTS_KEPT),
            verbose=0)  # Tune's tables print every config and result; the callback prints one line each
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    try:
        return tuner.fit()
    finally:
        if asked is not None:
            asked.release()


class AutoscalerDemand(Callback):
    """Asks the autoscaler (`ray.autoscaler.sdk.request_resources`) for the bundles of as many
    trials as run at once, for as long as that many are unfinished, then fewer.

    Pending Tune trials are demand the autoscaler sees, but a nested trial's Train workers are
    demand only while its controller waits on their placement group: before the trial's driver
    is placed and between a timed-out start and its retry the autoscaler sees none of it, and a
    node that came up for them can be removed as idle meanwhile. A standing request keeps the cluster at the
    size the sweep needs through every wait, and shrinks as trials finish, so idle nodes still go.
    A Tune callback (`on_trial_complete`/`on_trial_error`); plain data, so it pickles with the
    Tuner of an HPO phase."""

    def __init__(self, bundles: list[dict], concurrent: int, total: int):
        self.bundles, self.concurrent, self.total = bundles, concurrent, total
        self.ended: set[str] = set()
        self._request(min(concurrent, total))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)

    def _ended(self, trial) -> None:
        self.ended.add(trial.trial_id)
        self._request(min(self.concurrent, self.total - len(self.ended)))

    def release(self) -> None:
        self._request(0)

    def _request(self, trials: int) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(b) for _ in range(max(0, trials)) for b in self.bundles])


class _Shared(dict):
    """A `grid_search` entry that deep copies as itself. Tune deep-copies the whole unresolved
    param space for every grid variant, the list of every trial's config included: O(N^2) in
    the trials (minutes of driver CPU for 500). Tune replaces the entry's list once (its
    placeholders) and then only reads it; each variant's own config is still copied when Tune
    resolves it. (A list subclass would not do: that replacement makes it a plain list.)"""

    def __deepcopy__(self, memo):
        return self


def _search_setup(search, template: dict, concurrent: int):
    """Optuna over `search.space` around `template`, ASHA on a metric every report carries."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    # an objective may exist only in a trial's last report (the detector's val_image_AUROC is in
    # every one); Tune's strict check would reject the others, OptunaSearch fail on them
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    config = template["config"]
    reports = max(1, config.get("epochs", 100) // max(1, config.get("report_every", 1)))
    space = {name: (tune.loguniform if dist == "loguniform" else tune.uniform)(low, high)
             for name, (dist, low, high) in search.space.items()}
    searcher = _final_metric_optuna()(metric=search.metric, mode=search.mode, seed=0)
    tune_config = tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent), num_samples=search.num_samples,
        scheduler=ASHAScheduler(time_attr="training_iteration", metric=search.asha_metric, mode=search.asha_mode,
                                max_t=reports + 1, grace_period=search.grace_period),
        trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    return {"trial": template, "search": space}, tune_config


def _final_metric_optuna():
    """OptunaSearch that skips reports without its metric (a trainer may report its objective
    only at its end; the stock class raises KeyError on the earlier reports)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna's INFO line "A new study created in memory" would be the console's only log line
    # from it; the study is Tune's searcher state, saved and restored with the phase
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    class FinalMetricOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalMetricOptunaSearch


def trial_name(trial) -> str:
    """A trial's run name: its spec's name, plus the trial's index when sampled (HPO)."""
    name = trial.config["trial"]["name"]
    return f"{name}-{trial.trial_id.rsplit('_', 1)[-1]}" if trial.config.get("search") else name

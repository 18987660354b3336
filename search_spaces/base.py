"""What every search space shares: trial specs, sweep plans, and the checks made at build time.

A search space is data (grid axes and their values) plus a small builder that expands it into a
`SweepPlan`: explicit `TrialSpec`s grouped in phases that run one after the other (the GAN sweep
trains stage 1 before stage 2), or, for HPO, a template trial and a sampled space per phase.
Every plan is validated here, before Ray or MLflow are touched: unknown keys, impossible
combinations and unknown categories raise `UserInputError`, and every trial's trainer config is
built here, once (`validate_plan`), so a bad value fails now, not an hour into a sweep. That
config, flat and whole, is what the Tune trial carries to its worker and what MLflow records.
Nothing here imports Ray or torch. Not here: Ray Tune objects (`platform/tuner.py` turns a plan
into Tuners) and anything that starts a process.
"""

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainables.config import to_flat
from trainables.errors import UserInputError
from trainables.methods import make_trial_config

PRESETS = ("tiny", "small", "paper")
# fields a sweep owns: the user cannot `--set` them (they are axes or the run's identity)
RESERVED = ("data", "category", "seed", "preset", "device", "resume")


@dataclass(frozen=True)
class TrialSpec:
    """One trainer run: which entry point, with which config fields, shown how."""
    method: str                      # a key of trainables.methods.METHODS (or module:function)
    name: str                        # run identity: category, non-default switches, seed; no timestamp
    group: str                       # the table column it belongs to (ablation row, λ, partition, ...)
    category: str
    seed: int
    params: Mapping[str, Any]        # labels beyond the config (paper row, grid, honest source name)
    overrides: Mapping[str, Any]     # trainer config fields (category and seed included)
    needs: tuple[str, ...] = ()      # names of earlier phases' trials whose checkpoints it starts from
    needs_key: str | None = None     # the config field that receives them: one folder (a str field) or
                                     # all of them in `needs` order (a tuple field, e.g. dfmgan_banks)
    cfg: Any = None                  # the trainer's frozen config, built once by `validate_plan`

    def __post_init__(self):
        if isinstance(self.needs, str):  # one dependency, by name
            object.__setattr__(self, "needs", (self.needs,))
        assert bool(self.needs) == (self.needs_key is not None), (self.name, self.needs, self.needs_key)

    @property
    def config(self) -> dict[str, Any]:
        """The flat config the trial runs with (every field; the dependency's checkpoint is
        filled in by the driver when the earlier phase is done)."""
        assert self.cfg is not None, f"{self.name}: the plan was not validated"
        return to_flat(self.cfg)


@dataclass(frozen=True)
class Search:
    """A sampled space (HPO): Optuna proposes `space` values around a phase's template trial."""
    space: Mapping[str, tuple[str, float, float]]   # field -> ("loguniform" | "uniform", low, high)
    metric: str                      # what Optuna optimises (reported at the end of a trial)
    mode: str                        # "max" | "min"
    num_samples: int                 # trials per study
    asha_metric: str                 # what ASHA compares at each report (present in every report)
    asha_mode: str
    grace_period: int                # reports before ASHA may stop a trial


@dataclass(frozen=True)
class Phase:
    name: str
    trials: tuple[TrialSpec, ...]    # grid: run each; search: one template trial
    search: Search | None = None


@dataclass(frozen=True)
class SweepPlan:
    kind: str                        # ablation | gan | classify | hpo
    preset: str
    data: str                        # "embedded" or a dataset path, as given
    dataset: str                     # "embedded" | "mvtec"
    options: Mapping[str, Any]       # the user's choices; the sweep id is a hash of these
    phases: tuple[Phase, ...]
    notes: tuple[str, ...] = field(default=())   # caveats to print with the plan

    @property
    def trials(self) -> tuple[TrialSpec, ...]:
        return tuple(t for phase in self.phases for t in phase.trials)

    @property
    def n_runs(self) -> int:
        """Trainer runs this plan starts (a search phase runs num_samples of its template)."""
        return sum(p.search.num_samples if p.search else len(p.trials) for p in self.phases)


# ---------------------------------------------------------------- datasets

@dataclass(frozen=True)
class DatasetInfo:
    dataset: str                               # "embedded" | "mvtec"
    categories: tuple[str, ...]
    path: Path | None                          # None for the embedded set before it is generated

    def defect_types(self, category: str) -> tuple[str, ...]:
        if self.dataset == "embedded":
            from trainables.data import EMBEDDED_CATEGORIES

            return tuple(sorted(EMBEDDED_CATEGORIES[category][1]))
        return tuple(sorted({item.defect_type for item in _scan(self.path, category).test} - {"good"}))

    def n_train(self, category: str) -> int:
        if self.dataset == "embedded":
            from trainables.data.embedded import N_TRAIN

            return N_TRAIN
        return len(_scan(self.path, category).train)


@functools.lru_cache(maxsize=None)
def _scan(path: Path, category: str):
    """A category's file index (validated), listed once per process."""
    from trainables.data import scan_category

    return scan_category(path, category)


def dataset_info(data: str) -> DatasetInfo:
    """Categories of "embedded" (without generating it) or of a dataset folder (validated)."""
    if data == "embedded":
        from trainables.data import EMBEDDED_CATEGORIES

        return DatasetInfo("embedded", tuple(EMBEDDED_CATEGORIES), None)
    from trainables.data import list_categories

    path = Path(data).expanduser().resolve()
    return DatasetInfo("mvtec", tuple(list_categories(path)), path)


def pick_categories(info: DatasetInfo, requested) -> tuple[str, ...]:
    """The requested categories (all of the dataset's by default), checked against the dataset."""
    if not requested:
        return info.categories
    unknown = [c for c in requested if c not in info.categories]
    if unknown:
        raise UserInputError(f"--categories {' '.join(unknown)}: not in dataset {info.dataset!r}; "
                             f"expected some of {list(info.categories)}")
    if len(set(requested)) != len(requested):
        raise UserInputError(f"--categories {' '.join(requested)}: a category is listed twice")
    return tuple(requested)


def check_seeds(seeds: int) -> tuple[int, ...]:
    if seeds < 1:
        raise UserInputError(f"--seeds {seeds}: expected a positive number of seeds")
    return tuple(range(seeds))


def check_extra(extra: Mapping[str, Any] | None, axes: tuple[str, ...]) -> dict:
    """`--set key=value` pairs: never a sweep's own axis or identity field."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(RESERVED) | set(axes)))
    if clash:
        raise UserInputError(f"--set {', '.join(clash)}: set by the sweep itself (an axis or the run's "
                             f"identity); remove it or choose the values through the sweep's options")
    return extra


# ---------------------------------------------------------------- trainer configs

def build_trial_config(preset: str, data: str, trial: TrialSpec, **fields):
    """The trainer's frozen config for one trial (raises UserInputError on a bad field or value)."""
    overrides = {"data": data, **trial.overrides, **fields}
    if trial.needs_key is not None and trial.needs_key not in overrides:
        # filled with the earlier trials' checkpoints at run time
        overrides[trial.needs_key] = None if len(trial.needs) == 1 else ()
    return make_trial_config(trial.method, preset, overrides)


def check_world_size(plan: SweepPlan, world_size: int) -> None:
    """What depends on the resources: each trial's config against the DDP world it will run in."""
    for trial in plan.trials:
        check = getattr(trial.cfg, "check_world", None)
        if check is not None:
            try:
                check(world_size)
            except UserInputError as error:
                raise UserInputError(f"--workers-per-trial {world_size}: {trial.name}: {error}") from None


def validate_plan(plan: SweepPlan) -> SweepPlan:
    """The plan with every trial's config built, once; duplicate names or a missing dependency
    are errors."""
    if plan.preset not in PRESETS:
        raise UserInputError(f"--preset {plan.preset}: expected one of {list(PRESETS)}")
    earlier: set[str] = set()
    phases = []
    for phase in plan.phases:
        if not phase.trials:
            raise UserInputError(f"the {plan.kind} sweep has no trials in phase {phase.name!r}")
        names = [t.name for t in phase.trials]
        assert len(set(names)) == len(names) and not earlier & set(names), f"duplicate trial names in {names}"
        for trial in phase.trials:
            assert set(trial.needs) <= earlier, f"{trial.name} needs {trial.needs}"
        phases.append(dataclasses.replace(phase, trials=tuple(
            dataclasses.replace(t, cfg=build_trial_config(plan.preset, plan.data, t)) for t in phase.trials)))
        earlier |= set(names)
    return dataclasses.replace(plan, phases=tuple(phases))

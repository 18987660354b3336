"""The sweeps' search spaces: grids and sampled spaces as data plus small builders.

`build(kind, **options)` expands one space into a validated `SweepPlan` (see base.py). Kinds:
`ablation` (the detector's Table 4 grid), `gan` (DFMGAN stage 2 over defect types and λ),
`classify` (the downstream classification protocol) and `hpo` (Optuna per category).
"""

import importlib

from search_spaces.base import Phase, Search, SweepPlan, TrialSpec

KINDS = ("ablation", "gan", "classify", "hpo")


def build(kind: str, **options) -> SweepPlan:
    assert kind in KINDS, kind
    return importlib.import_module(f"search_spaces.{kind}").build(**options)


__all__ = ["KINDS", "Phase", "Search", "SweepPlan", "TrialSpec", "build"]

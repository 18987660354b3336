"""The detector's ablation grid (Peng et al. 2024, Table 4) across categories and seeds.

Two grids over the four switches of docs/detector.md §2.1 (detector config fields in
brackets): deep features [df], large kernel [lk], anomaly source MVTec vs DTD
[anomaly_source], and how the feature extractor F is trained, parameter copying vs gradient
update [df_update].

- `paper-rows`: Table 4's rows 2-8 as concrete switch combinations, following the mapping of
  docs/detector.md §2.2 (an inference: the paper's table marks are ambiguous). Row 1 is
  DRAEM's published result (98.00 / 68.40), shown in the summary table as a reference and
  never run.
- `factorial`: every meaningful combination: df × lk × source, and copy vs grad only where F
  exists (df on), 12 variants; those equal to a paper row carry its number.

"mvtec" is the clean source (other categories' training images); the paper-literal, leaky
variant (`mvtec_defects`) is not part of these grids. Without `--set dtd_root=...` the "dtd"
source falls back to the procedural texture bank; then the run names (`src_procedural`), the
`texture_source` param and the tables say "procedural (DTD absent)", never "DTD".
"""

from dataclasses import dataclass

from search_spaces.base import (SweepPlan, Phase, TrialSpec, check_extra, check_seeds, dataset_info,
                                pick_categories, validate_plan)
from trainables.errors import UserInputError

AXES = ("anomaly_source", "df", "lk", "df_update")
GRIDS = ("paper-rows", "factorial")


@dataclass(frozen=True)
class Variant:
    """One switch combination of the detector."""
    source: str          # "mvtec" | "dtd"
    df: bool             # deep-feature consistency loss
    lk: bool             # large-kernel units in D
    df_update: str       # "copy" | "grad"; "-" when df is off (there is no F to train)

    def __post_init__(self):
        if self.source not in ("mvtec", "dtd"):
            raise UserInputError(f"anomaly source {self.source!r}: expected mvtec or dtd")
        if self.df and self.df_update not in ("copy", "grad"):
            raise UserInputError(f"df_update={self.df_update!r}: expected copy or grad when deep features are on")
        if not self.df and self.df_update != "-":
            raise UserInputError(f"df_update={self.df_update}: impossible without deep features (no F to train)")

    def slug(self, dtd_present: bool = True) -> str:
        """Non-default switches, as in run names: `df_copy-lk-src_mvtec` (`src_procedural` for
        the dtd source when no DTD root is given)."""
        parts = [f"df_{self.df_update}"] if self.df else []
        return "-".join(parts + (["lk"] if self.lk else []) + [f"src_{texture_source(self.source, dtd_present)}"])

    @property
    def overrides(self) -> dict:
        """The config fields of the switches (df_update keeps its default when df is off)."""
        return {"anomaly_source": self.source, "df": self.df, "lk": self.lk,
                "df_update": self.df_update if self.df else "copy"}


PROCEDURAL = "procedural (DTD absent)"


def texture_source(source: str, dtd_present: bool) -> str:
    """Where a variant's anomaly appearance comes from, honestly: `procedural` stands in for DTD
    when no DTD root is given."""
    return "procedural" if source == "dtd" and not dtd_present else source


# Table 4 of the paper with the inferred row mapping (docs/detector.md §2.2): variant, and the
# paper's (image AUROC, "AP") in percent. The paper's AP is probably not a standard pixel AP
# (docs/detector.md §1.2); tables show it next to both of ours.
PAPER_ROWS: dict[int, tuple[Variant | None, tuple[float, float]]] = {
    1: (None, (98.00, 68.40)),   # DRAEM's published numbers: a reference, not run
    2: (Variant("dtd", df=False, lk=False, df_update="-"), (99.23, 99.62)),
    3: (Variant("dtd", df=True, lk=True, df_update="copy"), (99.61, 99.78)),
    4: (Variant("mvtec", df=False, lk=False, df_update="-"), (99.25, 99.54)),
    5: (Variant("mvtec", df=True, lk=False, df_update="copy"), (99.58, 99.79)),
    6: (Variant("mvtec", df=False, lk=True, df_update="-"), (99.27, 99.49)),
    7: (Variant("mvtec", df=True, lk=True, df_update="copy"), (99.70, 99.87)),
    8: (Variant("mvtec", df=True, lk=True, df_update="grad"), (99.33, 99.69)),
}
REFERENCE_ROW = 1
DRAEM_REFERENCE = "DRAEM (published)"


def factorial_variants() -> list[Variant]:
    return [Variant(source, df, lk, update)
            for source in ("mvtec", "dtd")
            for df in (False, True)
            for lk in (False, True)
            for update in (("copy", "grad") if df else ("-",))]


def paper_row(variant: Variant) -> int | None:
    """The Table 4 row a variant reproduces, if any."""
    return next((row for row, (v, _) in PAPER_ROWS.items() if v == variant), None)


def group_label(variant: Variant, grid: str, dtd_present: bool = True) -> str:
    """The table column of a variant: `row 7` in paper-rows, its slug in factorial."""
    row = paper_row(variant)
    return f"row {row}" if grid == "paper-rows" else variant.slug(dtd_present)


def labels(variant: Variant, grid: str, dtd_present: bool) -> dict:
    """A trial's MLflow labels beyond its config: the paper row, the grid, the variant's slug and
    the honest appearance source."""
    row = paper_row(variant)
    source = texture_source(variant.source, dtd_present)
    return {"grid": grid, "paper_row": row if row is not None else "-", "variant": variant.slug(dtd_present),
            "texture_source": PROCEDURAL if source == "procedural" else source}


def build(data: str = "embedded", categories=None, grid: str = "paper-rows", rows=None, seeds: int = 1,
          preset: str = "small", extra: dict | None = None) -> SweepPlan:
    """Expand grid × categories × seeds into detector trials; validated (UserInputError)."""
    if grid not in GRIDS:
        raise UserInputError(f"--grid {grid}: expected one of {list(GRIDS)}")
    info = dataset_info(data)
    categories = pick_categories(info, categories)
    seed_list = check_seeds(seeds)
    extra = check_extra(extra, AXES)
    variants = _variants(grid, rows)
    dtd_present = bool(extra.get("dtd_root"))
    trials = []
    for category in categories:
        for variant in variants:
            for seed in seed_list:
                trials.append(TrialSpec(
                    method="detector", name=f"{category}-{variant.slug(dtd_present)}-s{seed}",
                    group=group_label(variant, grid, dtd_present), category=category, seed=seed,
                    params=labels(variant, grid, dtd_present),
                    overrides={**extra, **variant.overrides, "category": category, "seed": seed}))
    options = {"grid": grid, "rows": sorted(rows) if rows else None, "categories": list(categories),
               "seeds": seeds, "set": extra}
    notes = [f"dataset={info.dataset}: numbers on it are not comparable with the paper's"] \
        if info.dataset == "embedded" else []
    if not dtd_present and any(v.source == "dtd" for v in variants):
        notes.append(f"the dtd rows use the {PROCEDURAL} texture bank: give --set dtd_root=PATH for DTD")
    plan = SweepPlan("ablation", preset, data, info.dataset, options, (Phase("trials", tuple(trials)),),
                     tuple(notes))
    return validate_plan(plan)


def _variants(grid: str, rows) -> list[Variant]:
    if grid == "factorial":
        if rows:
            raise UserInputError("--rows: only with --grid paper-rows (factorial runs every combination)")
        return factorial_variants()
    runnable = [row for row, (variant, _) in PAPER_ROWS.items() if variant is not None]
    rows = list(rows) if rows else runnable
    for row in rows:
        if row == REFERENCE_ROW:
            raise UserInputError(f"--rows {row}: row 1 is DRAEM's published result, shown as a reference "
                                 f"and never run; expected some of {runnable}")
        if row not in PAPER_ROWS:
            raise UserInputError(f"--rows {row}: Table 4 has rows {runnable} to run")
    return [PAPER_ROWS[row][0] for row in sorted(set(rows))]

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
variant (`mvtec_defects`) is not part of these grids. `--sources` picks the appearance sources:
the source axis of `factorial`, or, in `paper-rows`, each selected row again with every listed
source; `dfmgan` (DFMGAN's generated triplets, docs/dfmgan.md) is a third source, one per
`--lambdas` value. A grid with `dfmgan` is the joined grid of both papers, three phases: DFMGAN
stage 1 per category, stage 2 per (category, defect type, λ) on a seeded third of the type's
images (trainables/data/split.py), then the detectors, each dfmgan trial needing every defect
type's stage 2 at its λ; every detector of that grid, whatever its source, is evaluated on the
held-back two thirds plus the good test images, so its rows share one test set. Without `--set dtd_root=...` the "dtd"
source falls back to the procedural texture bank; then the run names (`src_procedural`), the
`texture_source` param and the tables say "procedural (DTD absent)", never "DTD".
"""

import dataclasses
from dataclasses import dataclass

from search_spaces import gan
from search_spaces.base import (SweepPlan, Phase, TrialSpec, check_extra, check_seeds, dataset_info,
                                pick_categories, validate_plan)
from trainables.errors import UserInputError

BANKS_KEY = "dfmgan_banks"   # the detector field that receives the stage-2 checkpoint folders
HOLDOUT = ("eval_holdout_seed", "holdout_fraction")
AXES = ("anomaly_source", "df", "lk", "df_update", BANKS_KEY) + HOLDOUT
GRIDS = ("paper-rows", "factorial")
SOURCES = ("mvtec", "dtd", "dfmgan")
DEFAULT_SOURCES = ("mvtec", "dtd")
DFMGAN_LAMBDAS = (0.1,)      # DFMGAN's published λ
HOLDOUT_SEED = 0             # partition 0 of seed 0: P1 of the gan sweep's classification protocol
GAN_PREFIX = "gan."          # `--set gan.KEY=VALUE` sets a DFMGAN field in the joined grid


@dataclass(frozen=True)
class Variant:
    """One switch combination of the detector."""
    source: str          # "mvtec" | "dtd" | "dfmgan"
    df: bool             # deep-feature consistency loss
    lk: bool             # large-kernel units in D
    df_update: str       # "copy" | "grad"; "-" when df is off (there is no F to train)
    lambda_ms: float | None = None   # dfmgan: the λ of the stage-2 models whose triplets it trains on

    def __post_init__(self):
        if self.source not in SOURCES:
            raise UserInputError(f"anomaly source {self.source!r}: expected one of {list(SOURCES)}")
        if (self.source == "dfmgan") != (self.lambda_ms is not None):
            raise UserInputError(f"anomaly source {self.source}: λ={self.lambda_ms} (only dfmgan has a λ)")
        if self.df and self.df_update not in ("copy", "grad"):
            raise UserInputError(f"df_update={self.df_update!r}: expected copy or grad when deep features are on")
        if not self.df and self.df_update != "-":
            raise UserInputError(f"df_update={self.df_update}: impossible without deep features (no F to train)")

    def slug(self, dtd_present: bool = True) -> str:
        """Non-default switches, as in run names: `df_copy-lk-src_mvtec` (`src_procedural` for
        the dtd source when no DTD root is given)."""
        parts = [f"df_{self.df_update}"] if self.df else []
        source = texture_source(self.source, dtd_present) + (f"_l{self.lambda_ms:g}" if self.lambda_ms is not None
                                                             else "")
        return "-".join(parts + (["lk"] if self.lk else []) + [f"src_{source}"])

    @property
    def overrides(self) -> dict:
        """The config fields of the switches (df_update keeps its default when df is off)."""
        return {"anomaly_source": self.source, "df": self.df, "lk": self.lk,
                "df_update": self.df_update if self.df else "copy"}

    def with_source(self, source: str, lambda_ms: float | None = None) -> "Variant":
        return dataclasses.replace(self, source=source, lambda_ms=lambda_ms)


PROCEDURAL = "procedural (DTD absent)"


def texture_source(source: str, dtd_present: bool) -> str:
    """Where a variant's anomaly appearance comes from, honestly: `procedural` stands in for DTD
    when no DTD root is given."""
    return "procedural" if source == "dtd" and not dtd_present else source


def source_label(variant: Variant, dtd_present: bool) -> str:
    """The source column of the tables: mvtec, dtd, procedural (DTD absent) or DFMGAN (λ=0.1)."""
    if variant.source == "dfmgan":
        return f"DFMGAN (λ={variant.lambda_ms:g})"
    source = texture_source(variant.source, dtd_present)
    return PROCEDURAL if source == "procedural" else source


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


def factorial_variants(sources=DEFAULT_SOURCES, lambdas=DFMGAN_LAMBDAS) -> list[Variant]:
    return [Variant(source, df, lk, update, lam)
            for source in sources
            for lam in (lambdas if source == "dfmgan" else (None,))
            for df in (False, True)
            for lk in (False, True)
            for update in (("copy", "grad") if df else ("-",))]


def paper_row(variant: Variant) -> int | None:
    """The Table 4 row a variant reproduces, if any."""
    return next((row for row, (v, _) in PAPER_ROWS.items() if v == variant), None)


def group_label(variant: Variant, grid: str, dtd_present: bool = True, base_row: int | None = None) -> str:
    """The table column of a variant: `row 7` in paper-rows (`row 7 · DFMGAN (λ=0.1)` for row 7's
    switches with another source), its slug in factorial."""
    if grid != "paper-rows":
        return variant.slug(dtd_present)
    row = paper_row(variant)
    return f"row {row}" if row is not None else f"row {base_row} · {source_label(variant, dtd_present)}"


def labels(variant: Variant, grid: str, dtd_present: bool) -> dict:
    """A trial's MLflow labels beyond its config: the paper row, the grid, the variant's slug and
    the honest appearance source (and λ for dfmgan)."""
    row = paper_row(variant)
    out = {"grid": grid, "paper_row": row if row is not None else "-", "variant": variant.slug(dtd_present),
           "texture_source": source_label(variant, dtd_present)}
    return out | ({"lambda_ms": variant.lambda_ms} if variant.lambda_ms is not None else {})


def build(data: str = "embedded", categories=None, grid: str = "paper-rows", rows=None, seeds: int = 1,
          preset: str = "small", extra: dict | None = None, sources=None, lambdas=None) -> SweepPlan:
    """Expand grid × categories × seeds into detector trials (with DFMGAN's two phases before them
    when a source is dfmgan); validated (UserInputError)."""
    if grid not in GRIDS:
        raise UserInputError(f"--grid {grid}: expected one of {list(GRIDS)}")
    info = dataset_info(data)
    categories = pick_categories(info, categories)
    seed_list = check_seeds(seeds)
    extra = dict(extra or {})
    gan_extra = {k.removeprefix(GAN_PREFIX): v for k, v in extra.items() if k.startswith(GAN_PREFIX)}
    extra = check_extra({k: v for k, v in extra.items() if not k.startswith(GAN_PREFIX)}, AXES)
    given = bool(sources)
    sources, lambdas = _sources(sources, lambdas)
    joined = "dfmgan" in sources
    if gan_extra and not joined:
        raise UserInputError(f"--set {GAN_PREFIX}{next(iter(gan_extra))}: DFMGAN settings only apply with "
                             f"--sources ... dfmgan")
    gan_extra = check_extra(gan_extra, gan.AXES + ("holdout_seed", "base_fraction"))
    variants = _variants(grid, rows, sources if given else None, lambdas)
    dtd_present = bool(extra.get("dtd_root"))
    # the joined grid: one test set for every row, without the images stage 2 learns from
    holdout = {"eval_holdout_seed": HOLDOUT_SEED, "holdout_fraction": 1 / 3} if joined else {}
    stage1, stage2 = [], []
    if joined:
        per_category = gan._defects(info, categories, None)
        stage1, stage2 = gan.gan_trials(categories, per_category, lambdas, (0,), gan_extra)
        stage2 = [dataclasses.replace(t, overrides={**t.overrides, "holdout_seed": HOLDOUT_SEED,
                                                    "base_fraction": 1 / 3}) for t in stage2]
    trials = []
    for category in categories:
        for variant, base_row in variants:
            dependency = {}
            if variant.source == "dfmgan":
                needs = tuple(gan.stage2_name(category, d, variant.lambda_ms, 0) for d in per_category[category])
                dependency = {"needs": needs, "needs_key": BANKS_KEY}
            for seed in seed_list:
                trials.append(TrialSpec(
                    method="detector", name=f"{category}-{variant.slug(dtd_present)}-s{seed}",
                    group=group_label(variant, grid, dtd_present, base_row), category=category, seed=seed,
                    params=labels(variant, grid, dtd_present),
                    overrides={**extra, **variant.overrides, **holdout, "category": category, "seed": seed,
                               **({BANKS_KEY: ()} if dependency else {})},
                    **dependency))
    options = {"grid": grid, "rows": sorted(rows) if rows else None, "categories": list(categories),
               "seeds": seeds, "set": extra}
    if given:  # only then: the sweep ids of plain ablation sweeps stay as they were
        options.update(sources=list(sources), lambdas=list(lambdas) if joined else None,
                       gan_set=gan_extra or None)
    notes = [f"dataset={info.dataset}: numbers on it are not comparable with the paper's"] \
        if info.dataset == "embedded" else []
    if not dtd_present and any(v.source == "dtd" for v, _ in variants):
        notes.append(f"the dtd rows use the {PROCEDURAL} texture bank: give --set dtd_root=PATH for DTD")
    if joined:
        notes.append(f"joined grid: DFMGAN stage 2 learns each defect type from a seeded third of its images "
                     f"(seed {HOLDOUT_SEED}, partition 0: P1 of the classification protocol); every detector row "
                     f"is evaluated on the held-back two thirds plus all good test images")
    phases = (Phase("stage1", tuple(stage1)), Phase("stage2", tuple(stage2))) if joined else ()
    plan = SweepPlan("ablation", preset, data, info.dataset, options, phases + (Phase("trials", tuple(trials)),),
                     tuple(notes))
    return validate_plan(plan)


def _sources(sources, lambdas) -> tuple[tuple[str, ...], tuple[float, ...]]:
    sources = tuple(sources) if sources else DEFAULT_SOURCES
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or len(set(sources)) != len(sources):
        raise UserInputError(f"--sources {' '.join(sources)}: expected distinct values of {list(SOURCES)}")
    if lambdas and "dfmgan" not in sources:
        raise UserInputError("--lambdas: λ is DFMGAN's; add dfmgan to --sources (e.g. --sources mvtec dfmgan)")
    return sources, gan.check_lambdas(lambdas) if lambdas else DFMGAN_LAMBDAS


def _variants(grid: str, rows, sources=None, lambdas=DFMGAN_LAMBDAS) -> list[tuple[Variant, int | None]]:
    """(variant, the Table 4 row it derives from) pairs, without duplicates; `sources` None = not given."""
    if grid == "factorial":
        if rows:
            raise UserInputError("--rows: only with --grid paper-rows (factorial runs every combination)")
        return [(v, None) for v in factorial_variants(sources or DEFAULT_SOURCES, lambdas)]
    runnable = [row for row, (variant, _) in PAPER_ROWS.items() if variant is not None]
    rows = list(rows) if rows else runnable
    for row in rows:
        if row == REFERENCE_ROW:
            raise UserInputError(f"--rows {row}: row 1 is DRAEM's published result, shown as a reference "
                                 f"and never run; expected some of {runnable}")
        if row not in PAPER_ROWS:
            raise UserInputError(f"--rows {row}: Table 4 has rows {runnable} to run")
    published = [(PAPER_ROWS[row][0], row) for row in sorted(set(rows))]
    if sources is None:
        return published
    # each selected row as published, then with every listed source (λ multiplies dfmgan only)
    out = {}
    for variant, row in published:
        out.setdefault(variant, row)
        for source in sources:
            for lam in (lambdas if source == "dfmgan" else (None,)):
                out.setdefault(variant.with_source(source, lam), row)
    return list(out.items())

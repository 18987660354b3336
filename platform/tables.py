"""Result tables of a sweep, built from MLflow runs alone, in the papers' layouts.

Input: a sweep's parent run and its child runs (params `category`, `group`, `seed` and the
switches; final metrics under their stable names; a metric that could not be computed is a
tag "unavailable"). Output, by sweep kind:

- ablation: per metric (image AUROC, pixel AUROC, pixel AP, image AP), a category x ablation-row
  table of seed means with a mean row, and the same as mean ± std over seeds; the summary in
  the layout of Table 4 of Peng et al. (row 1 = DRAEM's published numbers, a reference).
- gan: per category, DFMGAN's Table 1 layout: rows = λ, columns = KID×10³ and clustered LPIPS
  per defect type.
- classify: accuracy per category x partition, with mean ± std.
- hpo: the best trial per category and its sampled values.

Every table is logged on the parent run as an MLflow table (JSON), Markdown and CSV under
`tables/v<N>/` with N one more than the last version: `log_table` appends to an existing file,
so rebuilding never writes the same name twice. Metric values are shown in percent, like the
papers (KID×10³ and LPIPS as they are). Not here: MLflow writes other than the tables.
"""

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

DETECTOR_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP")
MISSING = "–"
UNAVAILABLE = "unavailable"


@dataclass
class Table:
    name: str                    # file stem: `ablation_image_AUROC`
    title: str
    frame: pd.DataFrame          # display values (strings); the index is the first column
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        frame = self.frame.reset_index()
        header = [str(c) for c in frame.columns]
        rows = [[str(v) for v in row] for row in frame.itertuples(index=False)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = [f"### {self.title}", "",
                 "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes]).rstrip() + "\n"

    def csv(self) -> str:
        return self.frame.reset_index().to_csv(index=False)


@dataclass
class Trial:
    """One child run, reduced to what tables need."""
    name: str
    category: str
    group: str
    seed: int
    status: str
    params: dict
    values: dict                 # metric -> float, or "unavailable"


# ---------------------------------------------------------------- entry points

def build_and_log(tracking_uri: str, parent_run_id: str, out_dir: Path | None = None) -> list[Table]:
    """Build the sweep's tables from MLflow, log them on the parent run (a new version), and
    optionally write them to `out_dir`."""
    from platform import tracking

    client = tracking.client(tracking_uri)
    parent = client.get_run(parent_run_id)
    trials = [_trial(run) for run in tracking.children(tracking_uri, parent_run_id)]
    built = build(parent.data.tags.get("sweep_kind", "ablation"), trials, parent.data.tags.get("dataset", "?"))
    version = next_version(client, parent_run_id)
    _forget_logged_tables(client, parent)
    for table in built:
        client.log_table(parent_run_id, data=table.frame.reset_index(), artifact_file=f"tables/v{version}/{table.name}.json")
        client.log_text(parent_run_id, table.markdown(), f"tables/v{version}/{table.name}.md")
        client.log_text(parent_run_id, table.csv(), f"tables/v{version}/{table.name}.csv")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{table.name}.md").write_text(table.markdown())
            (out_dir / f"{table.name}.csv").write_text(table.csv())
    client.log_text(parent_run_id, f"v{version}\n", "tables/LATEST")
    return built


def build(kind: str, trials: list[Trial], dataset: str) -> list[Table]:
    builders = {"ablation": ablation_tables, "gan": gan_tables, "classify": classify_tables, "hpo": hpo_tables}
    tables = builders[kind](trials)
    if dataset == "embedded":
        for table in tables:
            table.notes.append("dataset=embedded (synthetic): not comparable with the papers' MVTec AD numbers.")
    failed = sorted(t.name for t in trials if t.status != "FINISHED")
    if failed:
        for table in tables:
            table.notes.append(f"{len(failed)} trials did not finish ({', '.join(failed[:5])}"
                               f"{', ...' if len(failed) > 5 else ''}); their cells are missing ({MISSING}).")
    return tables


def summary_text(tables: list[Table]) -> str:
    """What a sweep prints at its end: the headline tables."""
    first = {"ablation_summary", "ablation_image_AUROC", "classification_accuracy", "hpo_best"}
    shown = [t for t in tables if t.name in first or t.name.startswith("dfmgan_")]
    return "\n".join(t.markdown() for t in (shown or tables))


def _forget_logged_tables(client, parent) -> None:
    """Drop earlier versions from the tag `mlflow.loggedArtifacts`, which `log_table` extends with
    every table it writes and which the store caps at 8,000 characters: a few rebuilds of a
    sweep's 27 tables would otherwise fail. The files of earlier versions stay."""
    import json

    key = "mlflow.loggedArtifacts"
    logged = json.loads(parent.data.tags.get(key, "[]"))
    kept = [entry for entry in logged if not str(entry.get("path", "")).startswith("tables/v")]
    if len(kept) != len(logged):
        client.set_tag(parent.info.run_id, key, json.dumps(kept))


def next_version(client, run_id: str) -> int:
    versions = [int(f.path.rsplit("/v", 1)[1]) for f in client.list_artifacts(run_id, "tables")
                if f.is_dir and f.path.rsplit("/", 1)[-1].startswith("v") and f.path.rsplit("/v", 1)[1].isdigit()]
    return max(versions, default=0) + 1


# ---------------------------------------------------------------- ablation (Peng et al. 2024)

def ablation_tables(trials: list[Trial]) -> list[Table]:
    from search_spaces.ablation import DRAEM_REFERENCE, PAPER_ROWS, REFERENCE_ROW

    groups = _ordered_groups(trials)
    categories = sorted({t.category for t in trials})
    seeds = sorted({t.seed for t in trials})
    tables = []
    for metric in DETECTOR_METRICS:
        cells = _cells(trials, metric)
        means = pd.DataFrame({g: [_fmt_mean(cells.get((c, g))) for c in categories] for g in groups},
                             index=pd.Index(categories, name="category"))
        means.loc["mean"] = [_fmt_mean(_mean_over_categories(cells, categories, g, seeds, by_seed=False))
                             for g in groups]
        tables.append(Table(f"ablation_{metric}", f"{metric} (%) per category and ablation row, mean over "
                                                  f"{len(seeds)} seed(s)", means))
        spread = pd.DataFrame({g: [_fmt_pm(cells.get((c, g))) for c in categories] for g in groups},
                              index=pd.Index(categories, name="category"))
        spread.loc["mean"] = [_fmt_pm(_mean_over_categories(cells, categories, g, seeds, by_seed=True))
                              for g in groups]
        tables.append(Table(f"ablation_{metric}_pm", f"{metric} (%) per category and ablation row, mean ± std "
                                                     f"over seeds (mean row: std of the per-seed means)", spread))

    # Table 4 layout: one line per row / variant; measured means over categories and seeds
    switches = {t.group: t.params for t in trials}
    lines = []
    if any(g.startswith("row ") for g in groups):
        _, (auroc, ap) = PAPER_ROWS[REFERENCE_ROW]
        lines.append({"Number": f"1 ({DRAEM_REFERENCE})", "Deep Features": "", "Large Kernel": "",
                      "MVTec AD": "", "DTD": "✓", "Parameter Copying": "", "Gradient Update": "",
                      **{_short(m): MISSING for m in DETECTOR_METRICS}, "paper AUROC": f"{auroc:.2f}",
                      "paper AP": f"{ap:.2f}"})
    metric_cells = {m: _cells(trials, m) for m in DETECTOR_METRICS}
    for group in groups:
        p = switches[group]
        row = p.get("paper_row", "-")
        paper = PAPER_ROWS.get(int(row))[1] if str(row).isdigit() else None
        lines.append({
            "Number": row if str(row).isdigit() else group,
            "Deep Features": _tick(p.get("deep_features")), "Large Kernel": _tick(p.get("large_kernel")),
            "MVTec AD": _tick(p.get("anomaly_source") != "dtd"), "DTD": _tick(p.get("anomaly_source") == "dtd"),
            "Parameter Copying": _tick(p.get("df_update") == "copy"),
            "Gradient Update": _tick(p.get("df_update") == "grad"),
            **{_short(m): _fmt_pm(_mean_over_categories(metric_cells[m], categories, group, seeds, by_seed=True))
               for m in DETECTOR_METRICS},
            "paper AUROC": f"{paper[0]:.2f}" if paper else MISSING,
            "paper AP": f"{paper[1]:.2f}" if paper else MISSING})
    summary = pd.DataFrame(lines).set_index("Number")
    tables.insert(0, Table("ablation_summary", f"Ablation summary in the layout of Table 4 (means over "
                                               f"{len(categories)} categories, ± std over {len(seeds)} seed(s); %)",
                           summary, ["The paper's AP is ambiguous (spec detector.md §1): compare it with both "
                                     "image AP and pixel AP. Row mapping: spec detector.md §2.2 (an inference)."]))
    return tables


def _short(metric: str) -> str:
    kind, name = metric.split("_")
    return f"{kind} {name}"


def _tick(value) -> str:
    return "✓" if str(value).lower() in ("true", "1") else ""


# ---------------------------------------------------------------- DFMGAN (Duan et al. 2023)

def gan_tables(trials: list[Trial]) -> list[Table]:
    """Table 1 layout per category: rows = λ, columns = (defect type, KID×10³ / clustered LPIPS)."""
    stage2 = [t for t in trials if t.params.get("stage") == "2"]
    tables = []
    for category in sorted({t.category for t in stage2}):
        mine = [t for t in stage2 if t.category == category]
        defects = sorted({t.params.get("defect", "?") for t in mine})
        lambdas = sorted({t.params.get("lambda_ms", "?") for t in mine}, key=_as_float)
        seeds = sorted({t.seed for t in mine})
        columns = {}
        for defect in defects:
            for metric, label in (("KID_x1e3", "KID×10³ ↓"), ("clustered_LPIPS", "cLPIPS ↑")):
                values = {}
                for t in mine:
                    if t.params.get("defect") == defect:
                        values.setdefault(t.params.get("lambda_ms"), []).append(t.values.get(metric))
                columns[f"{defect} {label}"] = [_fmt_pm(_collect(values.get(lam)), scale=1, digits=3)
                                                for lam in lambdas]
        frame = pd.DataFrame(columns, index=pd.Index([f"DFMGAN λ={lam}" for lam in lambdas], name="method"))
        tables.append(Table(f"dfmgan_{category}", f"DFMGAN on {category}: KID×10³ and clustered LPIPS per "
                                                  f"defect type (Table 1 layout), ± std over {len(seeds)} seed(s)",
                            frame))
    return tables


# ---------------------------------------------------------------- classification protocol

def classify_tables(trials: list[Trial]) -> list[Table]:
    trials = [t for t in trials if "partition" in t.params]  # not the stage-1 runs
    categories = sorted({t.category for t in trials})
    partitions = sorted({int(t.params.get("partition", 0)) for t in trials})
    rows = {}
    for category in categories:
        by_partition = {p: _collect([t.values.get("accuracy") for t in trials
                                     if t.category == category and int(t.params.get("partition", 0)) == p])
                        for p in partitions}
        means = [statistics.mean(v) for v in by_partition.values() if isinstance(v, list) and v]
        rows[category] = [_fmt_mean(by_partition[p]) for p in partitions] + [_fmt_pm(means)]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=[f"P{p + 1} Acc" for p in partitions] + ["mean ± std"])
    frame.index.name = "category"
    return [Table("classification_accuracy", "Defect classification accuracy (%) per partition (Table 2 layout)",
                  frame)]


# ---------------------------------------------------------------- HPO

def hpo_tables(trials: list[Trial]) -> list[Table]:
    trials = [t for t in trials if t.status == "FINISHED"]
    rows = {}
    for category in sorted({t.category for t in trials}):
        scored = [t for t in trials if t.category == category and isinstance(t.values.get("image_AUROC"), float)]
        if not scored:
            rows[category] = {"best image_AUROC": MISSING, "trials": len([t for t in trials if t.category == category])}
            continue
        best = max(scored, key=lambda t: t.values["image_AUROC"])
        rows[category] = {"best image_AUROC": f"{100 * best.values['image_AUROC']:.2f}",
                          "trials": len([t for t in trials if t.category == category]), "run": best.name,
                          **{k: f"{float(best.params[k]):.3g}" for k in ("lr", "w_l2", "w_ssim", "w_df")
                             if k in best.params}}
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna(MISSING)
    frame.index.name = "category"
    return [Table("hpo_best", "Best trial per category (Optuna; image AUROC on the test split, optimistic)", frame)]


# ---------------------------------------------------------------- helpers

def _trial(run) -> Trial:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    values = {**{k: v for k, v in tags.items() if v == UNAVAILABLE}, **metrics}
    return Trial(name=tags.get("trial_name", run.info.run_name), category=params.get("category", "?"),
                 group=params.get("group", tags.get("group", "?")), seed=int(params.get("seed", 0)),
                 status=run.info.status, params=params, values=values)


def _ordered_groups(trials: list[Trial]) -> list[str]:
    """Ablation rows in their natural order (row 2 .. row 8; factorial in plan order)."""
    def key(group: str):
        return (0, int(group.split()[1])) if group.startswith("row ") and group.split()[1].isdigit() else (1, group)
    return sorted({t.group for t in trials}, key=key)


def _cells(trials: list[Trial], metric: str) -> dict:
    """(category, group) -> list of per-seed values (floats), or "unavailable"."""
    cells: dict = {}
    for t in trials:
        if t.status != "FINISHED":
            continue
        cells.setdefault((t.category, t.group), []).append((t.seed, t.values.get(metric)))
    return {key: _collect([v for _, v in sorted(pairs)]) for key, pairs in cells.items()}


def _collect(values):
    """Seed values -> list of floats; "unavailable" if any is; None if there are none."""
    if not values:
        return None
    if any(v == UNAVAILABLE for v in values):
        return UNAVAILABLE
    floats = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return floats or None


def _mean_over_categories(cells: dict, categories, group: str, seeds, by_seed: bool):
    """Mean over categories. by_seed: one value per seed (the categories' mean for that seed),
    so mean ± std is over seeds; else one value per category (its seed mean)."""
    per_category = [cells.get((c, group)) for c in categories]
    if any(v == UNAVAILABLE for v in per_category):
        return UNAVAILABLE
    if any(v is None for v in per_category):
        return None  # a missing cell: no honest mean
    if not by_seed:
        return [statistics.mean(statistics.mean(v) for v in per_category)]
    n = min(len(v) for v in per_category)
    return [statistics.mean(v[s] for v in per_category) for s in range(n)]


def _fmt_mean(values, scale: float = 100, digits: int = 2) -> str:
    if values is None:
        return MISSING
    if values == UNAVAILABLE:
        return UNAVAILABLE
    return f"{scale * statistics.mean(values):.{digits}f}"


def _fmt_pm(values, scale: float = 100, digits: int = 2) -> str:
    if values is None or values == UNAVAILABLE:
        return _fmt_mean(values)
    mean = f"{scale * statistics.mean(values):.{digits}f}"
    return f"{mean} ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else mean


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf

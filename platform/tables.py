"""Result tables of a sweep, built from MLflow runs alone, in the papers' layouts.

Input: a sweep's parent run, its plan (`plan.json`: every planned trial's category, group,
seed and switches) and its child runs (final metrics under their stable names; a metric that
could not be computed is a tag "unavailable", with the trainer's reason beside it as
`<metric>_note`, which a table showing "unavailable" repeats under itself). Tables are laid
out from the plan, not from the runs that happen to exist: a planned trial that did not finish
is a missing cell (–), and a mean says over how many of the planned (category, seed) pairs it
is taken (n/N). Seeds are matched by their number, never by position. Output, by sweep kind:

- ablation: per metric (image AUROC, pixel AUROC, pixel AP, image AP), a category x ablation-row
  table of seed means with a mean row, and the same as mean ± std over seeds; the summary in
  the layout of Table 4 of Peng et al. (row 1 = DRAEM's published numbers, a reference), whose
  switch columns use the config's names (df, lk, anomaly_source, df_update).
- gan: per category, DFMGAN's Table 1 layout: rows = λ, columns = KID×10³ and clustered LPIPS
  per defect type.
- classify: accuracy per category x partition, with mean ± std.
- hpo: per category, the trial chosen by its validation metric (`val_image_AUROC`), its
  sampled values and, beside them, its test metrics (never used to choose).

Every table is logged on the parent run as an MLflow table (JSON), Markdown and CSV under
`tables/v<N>/` with N one more than the last version: `log_table` appends to an existing file,
so rebuilding never writes the same name twice. Metric values are shown in percent, like the
papers (KID×10³ and LPIPS as they are). Not here: MLflow writes other than the tables.
"""

import json
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
class Planned:
    """One trial of the plan: where its cell is."""
    name: str
    category: str
    group: str
    seed: int
    params: dict                 # labels (paper row, grid, honest source name)
    switches: dict               # its config's switch fields (df, lk, anomaly_source, λ, ...)

    @classmethod
    def from_dict(cls, entry: dict) -> "Planned":
        return cls(entry["name"], entry["category"], entry["group"], int(entry["seed"]),
                   {k: str(v) for k, v in entry["params"].items()},
                   {k: str(v) for k, v in entry.get("switches", {}).items()})


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
    run_id: str = ""
    skipped: str = ""            # why it never ran (a trial it needs failed), from its run's tag
    why_unavailable: dict = field(default_factory=dict)   # metric -> the trainer's note (how to provision)
    classifier_from_scratch: str = ""   # the classification protocol's note when its ResNet-34 had no ImageNet weights


# ---------------------------------------------------------------- entry points

def build_and_log(tracking_uri: str, parent_run_id: str, out_dir: Path | None = None) -> list[Table]:
    """Build the sweep's tables from MLflow, log them on the parent run (a new version), and
    optionally write them to `out_dir`."""
    from platform import tracking

    client = tracking.client(tracking_uri)
    parent = client.get_run(parent_run_id)
    trials = [_trial(run) for run in tracking.children(tracking_uri, parent_run_id)]
    planned = None
    if any(f.path == "plan.json" for f in client.list_artifacts(parent_run_id)):
        plan = tracking.read_json(client, parent_run_id, "plan.json")
        planned = [Planned.from_dict(entry) for entry in plan]
    built = build(parent.data.tags.get("sweep_kind", "ablation"), trials, parent.data.tags.get("dataset", "?"),
                  planned)
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
    if parent.data.tags.get("sweep_kind") == "ablation" and planned:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="plots-") as folder:
            detectors = [p for p in planned if "stage" not in p.params]  # a joined grid's GAN trials: no bars
            drawn = ablation_plots(detectors, {t.name: t for t in trials}, Path(folder), _curves_reader(client))
            client.log_artifacts(parent_run_id, folder, f"tables/v{version}/plots")
            if out_dir is not None:
                for path in drawn:
                    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
                    (out_dir / "plots" / path.name).write_bytes(path.read_bytes())
    client.log_text(parent_run_id, f"v{version}\n", "tables/LATEST")
    return built


def build(kind: str, trials: list[Trial], dataset: str, planned: list["Planned"] | None = None) -> list[Table]:
    """The sweep's tables from its runs, laid out by its plan (by the runs when there is none)."""
    if planned is None:
        planned = [Planned(t.name, t.category, t.group, t.seed, t.params, t.params) for t in trials]
    runs = {t.name: t for t in trials}
    if kind == "hpo":
        tables = hpo_tables(trials)
    elif kind == "ablation" and any("stage" in p.params for p in planned):
        # the joined grid: the detector's tables, DFMGAN's Table 1 and the λ table side by side
        detectors = [p for p in planned if "stage" not in p.params]
        tables = ablation_tables(detectors, runs) + gan_tables(planned, runs) + lambda_tables(planned, runs)
        for table in tables:
            table.notes.append(JOINED_SPLIT)
    else:
        builders = {"ablation": ablation_tables, "gan": gan_tables, "classify": classify_tables}
        tables = builders[kind](planned, runs)
    if dataset == "embedded":
        for table in tables:
            table.notes.append("dataset=embedded (synthetic): not comparable with the papers' MVTec AD numbers.")
    finished = {t.name for t in trials if t.status == "FINISHED"}
    unfinished = [p.name for p in planned if p.name not in finished] if kind != "hpo" else []
    if unfinished:
        for table in tables:
            table.notes.append(f"{len(unfinished)} of {len(planned)} planned trials did not finish "
                               f"({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}); their "
                               f"cells are missing ({MISSING}) and means say over how many they are taken (n/N).")
    # each distinct reason a metric is 'unavailable' (missing pretrained weights), under every
    # table that shows the word: the trainers' own notes say how to provision the weights
    reasons: dict[str, set[str]] = {}
    for trial in trials:
        for metric, note in trial.why_unavailable.items():
            reasons.setdefault(note, set()).add(metric)
    for table in tables:
        if reasons and table.frame.astype(str).eq(UNAVAILABLE).any().any():
            table.notes += [f"{UNAVAILABLE} ({', '.join(sorted(metrics))}): {note}"
                            for note, metrics in reasons.items()]
    skipped = [t for t in trials if t.skipped]
    if skipped:
        for table in tables:
            table.notes.append("Skipped: " + "; ".join(f"{t.name} ({t.skipped})" for t in skipped[:5])
                               + ("; ..." if len(skipped) > 5 else ""))
    return tables


def summary_text(tables: list[Table]) -> str:
    """What a sweep prints at its end: the headline tables."""
    first = {"ablation_summary", "comparisons", "ablation_image_AUROC", "classification_accuracy", "hpo_best"}
    shown = [t for t in tables if t.name in first or t.name.startswith(("dfmgan_", "lambda_"))]
    return "\n".join(t.markdown() for t in (shown or tables))


def _forget_logged_tables(client, parent) -> None:
    """Drop earlier versions from the tag `mlflow.loggedArtifacts`, which `log_table` extends with
    every table it writes and which the store caps at 8,000 characters: a few rebuilds of a
    sweep's 27 tables would otherwise fail. The files of earlier versions stay."""

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

SWITCH_HEADERS = {"df": "df (deep features)", "lk": "lk (large kernel)", "anomaly_source": "anomaly_source",
                  "df_update": "df_update (F training)"}


def ablation_tables(planned: list[Planned], runs: dict[str, Trial]) -> list[Table]:
    from search_spaces.ablation import DRAEM_REFERENCE, PAPER_ROWS, PROCEDURAL, REFERENCE_ROW

    groups = _ordered_groups(planned)
    categories = sorted({p.category for p in planned})
    tables = []
    for metric in DETECTOR_METRICS:
        cells = _cells(planned, runs, metric)
        means = pd.DataFrame({g: [_fmt_cell(cells[(c, g)]) for c in categories] for g in groups},
                             index=pd.Index(categories, name="category"))
        means.loc["mean"] = [_fmt_over(cells, g, by_seed=False) for g in groups]
        tables.append(Table(f"ablation_{metric}", f"{metric} (%) per category and ablation row, mean over seeds",
                            means))
        spread = pd.DataFrame({g: [_fmt_cell(cells[(c, g)], pm=True) for c in categories] for g in groups},
                              index=pd.Index(categories, name="category"))
        spread.loc["mean"] = [_fmt_over(cells, g, by_seed=True) for g in groups]
        tables.append(Table(f"ablation_{metric}_pm", f"{metric} (%) per category and ablation row, mean ± std "
                                                     f"over seeds (mean row: std of the per-seed means)", spread))

    # Table 4 layout: one line per row / variant; measured means over categories and seeds
    first = {}
    for p in planned:
        first.setdefault(p.group, p)
    lines = []
    if any(g.startswith("row ") for g in groups):
        _, (auroc, ap) = PAPER_ROWS[REFERENCE_ROW]
        lines.append({"Number": f"1 ({DRAEM_REFERENCE})", SWITCH_HEADERS["df"]: "", SWITCH_HEADERS["lk"]: "",
                      "anomaly_source": "dtd", SWITCH_HEADERS["df_update"]: "",
                      **{_short(m): MISSING for m in DETECTOR_METRICS}, "paper AUROC": f"{auroc:.2f}",
                      "paper AP": f"{ap:.2f}"})
    metric_cells = {m: _cells(planned, runs, m) for m in DETECTOR_METRICS}
    procedural = False
    for group in groups:
        p, s = first[group].params, first[group].switches
        row = p.get("paper_row", "-")
        paper = PAPER_ROWS.get(int(row))[1] if str(row).isdigit() else None
        source = p.get("texture_source") or s.get("anomaly_source", "?")
        procedural |= source == PROCEDURAL
        df_on = _true(s.get("df"))
        lines.append({
            "Number": row if str(row).isdigit() else group,
            SWITCH_HEADERS["df"]: _tick(df_on), SWITCH_HEADERS["lk"]: _tick(_true(s.get("lk"))),
            "anomaly_source": source, SWITCH_HEADERS["df_update"]: s.get("df_update", "") if df_on else "",
            **{_short(m): _fmt_over(metric_cells[m], group, by_seed=True) for m in DETECTOR_METRICS},
            "paper AUROC": f"{paper[0]:.2f}" if paper else MISSING,
            "paper AP": f"{paper[1]:.2f}" if paper else MISSING})
    comparisons = _comparisons(planned, runs)
    marks = {c.row: c for c in comparisons if c.metric == "image_AUROC" and c.kind == "reference"}
    reference = next((c.vs for c in marks.values()), None)
    delta = f"Δ image AUROC vs {reference or 'row 7'}"
    for line, group in zip(lines[-len(groups):], groups):
        line[delta] = _mark(marks.get(group), group == reference)
    for line in lines:
        line.setdefault(delta, "")  # DRAEM's published row: nothing measured to compare
    summary = pd.DataFrame(lines).set_index("Number")
    notes = ["Means over categories, ± std over seeds (per-seed means), with n/N = finished of planned "
             "(category, seed) pairs. The paper's AP is ambiguous (docs/detector.md §5): compare it with both "
             "image AP and pixel AP. Row mapping: docs/detector.md §2 (an inference)."]
    if procedural:
        notes.append(f"{PROCEDURAL}: no DTD root was given, so the procedural texture bank stood in for DTD "
                     f"(--set dtd_root=PATH for the real DTD); these rows are not the paper's DTD rows.")
    notes.append("Δ vs the full model: mean paired difference in percentage points over (category, seed) "
                 "pairs; * = significant (Wilcoxon signed-rank p < 0.05 and the paired-bootstrap 95% interval "
                 "excludes 0), n.s. = not significant; see the comparisons table.")
    tables.insert(0, Table("ablation_summary", f"Ablation summary in the layout of Table 4 ({len(categories)} "
                                               f"categories; %)", summary, notes))
    if comparisons:
        from platform import stats

        tables.insert(1, Table("comparisons", "Paired comparisons: each row vs the full model and vs its one-switch "
                                              "neighbours, over (category, seed) pairs",
                               stats.comparisons_frame(comparisons),
                               ["mean diff = row − vs, in percentage points; 95% CI: paired bootstrap (10,000 "
                                "resamples, seeded); Wilcoxon signed-rank two-sided p (NaN below 6 non-zero "
                                "pairs, where it cannot reach 0.05); Holm p adjusts over one metric's comparisons."]))
    return tables


def _variants(planned: list[Planned]) -> dict:
    """{group: Variant} from the plan's switches (the statistics need each row's switch values)."""
    from search_spaces.ablation import Variant

    variants = {}
    for p in planned:
        s = p.switches
        if p.group in variants or not {"anomaly_source", "df", "lk"} <= set(s):
            continue
        df = _true(s["df"])
        lam = _as_float(s["lambda_ms"]) if s["anomaly_source"] == "dfmgan" else None
        variants[p.group] = Variant(s["anomaly_source"], df, _true(s["lk"]), s.get("df_update", "copy") if df else "-",
                                    lam)
    return variants


def _values(planned: list[Planned], runs: dict[str, Trial], metric: str) -> dict:
    """{(group, category, seed): value} of the plan's finished trials (what platform/stats.py reads)."""
    out = {}
    for p in planned:
        run = runs.get(p.name)
        value = run.values.get(metric) if run is not None and run.status == "FINISHED" else None
        if isinstance(value, float) and not math.isnan(value):
            out[p.group, p.category, p.seed] = value
    return out


def _comparisons(planned: list[Planned], runs: dict[str, Trial]) -> list:
    from platform import stats

    variants = _variants(planned)
    if stats.reference_group(variants) is None:
        return []  # no full model in this sweep: nothing to compare the rows with
    return [c for metric in DETECTOR_METRICS
            for c in stats.compare_rows(_values(planned, runs, metric), metric, variants)]


def _mark(comparison, is_reference: bool) -> str:
    if is_reference:
        return "(reference)"
    if comparison is None or not comparison.n:
        return MISSING
    return f"{100 * comparison.mean_diff:+.2f} {'*' if comparison.significant else 'n.s.'}"


def ablation_plots(planned: list[Planned], runs: dict[str, Trial], folder: Path, curves_of) -> list[Path]:
    """The Table 4 rows as bars with 95% intervals per metric, a category x row heat-map of image
    AUROC, and every child's training curve per row; PNGs in `folder`. `curves_of(run_id)` gives a
    run's (steps, values) of the training loss."""
    from platform import plots, stats

    groups = _ordered_groups(planned)
    values = {m: _values(planned, runs, m) for m in DETECTOR_METRICS}
    drawn = []
    rows = {m: stats.row_means(v) for m, v in values.items() if v}
    if rows:
        plots.plot_ablation_bars(rows, folder / "ablation_bars.png", paper=plots.paper_marks(),
                                 groups=[g for g in groups if any(g in r for r in rows.values())])
        drawn.append(folder / "ablation_bars.png")
    if values["image_AUROC"]:
        plots.plot_category_heatmap(stats.cell_means(values["image_AUROC"]), folder / "heatmap_image_AUROC.png",
                                    categories=sorted({p.category for p in planned}), groups=groups)
        drawn.append(folder / "heatmap_image_AUROC.png")
    curves = {}
    for p in planned:
        run = runs.get(p.name)
        if run is not None and run.run_id:
            steps, losses = curves_of(run.run_id)
            if steps:
                curves.setdefault(p.group, []).append((p.name, steps, losses))
    if curves:
        plots.plot_training_curves({g: curves[g] for g in groups if g in curves}, folder / "curves_loss.png",
                                   CURVE_METRIC, xlabel="report")
        drawn.append(folder / "curves_loss.png")
    return drawn


CURVE_METRIC = "loss/total"


def _curves_reader(client):
    def curve(run_id: str) -> tuple[list, list]:
        history = sorted(client.get_metric_history(run_id, CURVE_METRIC), key=lambda m: m.step)
        return [m.step for m in history], [m.value for m in history]
    return curve


def _short(metric: str) -> str:
    kind, name = metric.split("_")
    return f"{kind} {name}"


def _true(value) -> bool:
    return str(value).lower() in ("true", "1")


def _tick(value: bool) -> str:
    return "✓" if value else ""


# ---------------------------------------------------------------- DFMGAN (Duan et al. 2023)

def gan_tables(planned: list[Planned], runs: dict[str, Trial]) -> list[Table]:
    """Table 1 layout per category: rows = λ, columns = (defect type, KID×10³ / clustered LPIPS)."""
    stage2 = [p for p in planned if p.params.get("stage") == "2"]
    tables = []
    for category in sorted({p.category for p in stage2}):
        mine = [p for p in stage2 if p.category == category]
        defects = sorted({p.switches.get("defect", "?") for p in mine})
        lambdas = sorted({p.switches.get("lambda_ms", "?") for p in mine}, key=_as_float)
        seeds = sorted({p.seed for p in mine})
        columns = {}
        for defect in defects:
            for metric, label in (("KID_x1e3", "KID×10³ ↓"), ("clustered_LPIPS", "cLPIPS ↑")):
                cells = {lam: _merged(_cells([p for p in mine if p.switches.get("defect") == defect
                                              and p.switches.get("lambda_ms") == lam], runs, metric))
                         for lam in lambdas}
                columns[f"{defect} {label}"] = [_fmt_cell(cells[lam], pm=True, scale=1, digits=3) for lam in lambdas]
        frame = pd.DataFrame(columns, index=pd.Index([f"DFMGAN λ={lam}" for lam in lambdas], name="method"))
        tables.append(Table(f"dfmgan_{category}", f"DFMGAN on {category}: KID×10³ and clustered LPIPS per "
                                                  f"defect type (Table 1 layout), ± std over {len(seeds)} seed(s)",
                            frame))
    return tables


# ---------------------------------------------------------------- the joined grid (both papers)

JOINED_SPLIT = ("Test split (joined grid): every detector row is evaluated on the same images, all good test "
                "images plus the two thirds of each defect type that DFMGAN's stage 2 did not learn from "
                "(seed 0, partition 0 = P1 of the classification protocol; trainables/data/split.py).")


def lambda_tables(planned: list[Planned], runs: dict[str, Trial]) -> list[Table]:
    """Per category: the full model (df, lk, copy) with each source, the dfmgan ones per λ, and
    beside those DFMGAN's own KID×10³ and clustered LPIPS at that λ (mean over defect types)."""
    full = [p for p in planned if "stage" not in p.params and _true(p.switches.get("df"))
            and _true(p.switches.get("lk")) and p.switches.get("df_update") == "copy"]
    if not any(p.switches.get("anomaly_source") == "dfmgan" for p in full):
        return []
    stage2 = [p for p in planned if p.params.get("stage") == "2"]
    groups = _ordered_groups(full)
    cells = {m: _cells(full, runs, m) for m in DETECTOR_METRICS}
    lines = []
    for category in sorted({p.category for p in full}):
        for group in groups:
            mine = [p for p in full if p.category == category and p.group == group]
            if not mine:
                continue
            s, source = mine[0].switches, mine[0].params.get("texture_source", mine[0].switches.get("anomaly_source"))
            line = {"category": category, "source": source,
                    **{_short(m): _fmt_cell(cells[m][(category, group)]) for m in DETECTOR_METRICS}}
            for metric, label in (("KID_x1e3", "DFMGAN KID×10³ ↓"), ("clustered_LPIPS", "DFMGAN cLPIPS ↑")):
                line[label] = _gan_mean([p for p in stage2 if p.category == category and s.get("lambda_ms")
                                         and _as_float(p.switches.get("lambda_ms")) == _as_float(s["lambda_ms"])],
                                        runs, metric) if s.get("anomaly_source") == "dfmgan" else ""
            lines.append(line)
    frame = pd.DataFrame(lines).set_index("category")
    return [Table("lambda_table", "DFMGAN's λ as the detector's source: the full model (row 7's switches) per "
                                  "category and source (%), with DFMGAN's own KID×10³ and clustered LPIPS at that λ",
                  frame, ["KID and cLPIPS: mean over the category's defect types (n/N when some stage-2 runs are "
                          "missing); 'unavailable' when the Inception / AlexNet weights are not provisioned."])]


def _gan_mean(planned: list[Planned], runs: dict[str, Trial], metric: str) -> str:
    values = []
    for p in planned:
        run = runs.get(p.name)
        value = run.values.get(metric) if run is not None and run.status == "FINISHED" else None
        if value == UNAVAILABLE:
            return UNAVAILABLE
        if isinstance(value, float) and not math.isnan(value):
            values.append(value)
    text = _fmt_mean(values or None, scale=1, digits=3)
    return text if len(values) in (0, len(planned)) else f"{text} ({len(values)}/{len(planned)})"


# ---------------------------------------------------------------- classification protocol

def classify_tables(planned: list[Planned], runs: dict[str, Trial]) -> list[Table]:
    planned = [p for p in planned if p.switches.get("partition", "None") not in ("None", "")]
    categories = sorted({p.category for p in planned})
    partitions = sorted({int(p.switches["partition"]) for p in planned})
    rows = {}
    for category in categories:
        cells = {part: _merged(_cells([p for p in planned if p.category == category
                                       and int(p.switches["partition"]) == part], runs, "accuracy"))
                 for part in partitions}
        means = [statistics.mean(cell.values.values()) for cell in cells.values()
                 if cell.values and not cell.unavailable]
        rows[category] = [_fmt_cell(cells[part]) for part in partitions] + [_fmt_pm(means or None)]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=[f"P{p + 1} Acc" for p in partitions] + ["mean ± std"])
    frame.index.name = "category"
    finished = [runs[p.name] for p in planned if p.name in runs]
    scratch = [t.classifier_from_scratch for t in finished if t.classifier_from_scratch]
    notes = [f"ResNet-34 without ImageNet weights in {len(scratch)} of {len(finished)} runs: not the protocol's "
             f"pretrained classifier (docs/dfmgan.md §6), so not comparable with Table 2. {note}"
             for note in dict.fromkeys(scratch)]
    return [Table("classification_accuracy", "Defect classification accuracy (%) per partition (Table 2 layout)",
                  frame, notes)]


def _merged(cells: dict[tuple[str, str], "Cell"]) -> "Cell":
    """One table position made of cells that differ only in category or group."""
    merged = Cell([], {})
    for cell in cells.values():
        merged.planned += cell.planned
        merged.values.update(cell.values)
    return merged


# ---------------------------------------------------------------- HPO

HPO_SELECT = "val_image_AUROC"   # search_spaces/hpo.py METRIC: held-out train/good, synthetic anomalies
HPO_TIE_BREAK = "val_pixel_AUROC"   # on the same validation images: the test split never chooses
HPO_SHOWN = ("val_image_AUROC", "val_pixel_AUROC", "image_AUROC", "pixel_AUROC", "pixel_AP", "image_AP")


def hpo_tables(trials: list[Trial]) -> list[Table]:
    """The trial chosen per category by the validation metric, with its test metrics beside it.

    The test metrics play no part in the choice: each trial measured them once, at its end.
    Ranked are the trials that ran to their end (`final`): one ASHA stopped has a validation
    metric of fewer steps and no test metric. A trial without a validation metric (a sweep
    from before the validation split) is not ranked rather than ranked on the test split."""
    trials = [t for t in trials if t.status == "FINISHED"]
    rows = {}
    for category in sorted({t.category for t in trials}):
        mine = [t for t in trials if t.category == category]
        scored = [t for t in mine if isinstance(t.values.get(HPO_SELECT), float) and t.values.get("final") == 1]
        stopped = sum(t.values.get("final") != 1 for t in mine)
        if not scored:
            rows[category] = {"trials": len(mine), "stopped early": stopped}
            continue
        # ties on the selection metric are common (a held-out set of a dozen images gives AUROCs
        # in coarse steps, and many trials reach 100%): the validation pixel AUROC breaks them,
        # then the run name, so a rebuilt table chooses the same trial
        chosen = max(sorted(scored, key=lambda t: t.name), key=lambda t: (
            t.values[HPO_SELECT], t.values[HPO_TIE_BREAK] if isinstance(t.values.get(HPO_TIE_BREAK), float)
            else -math.inf))
        rows[category] = {
            **{_hpo_header(m): _fmt_value(chosen.values.get(m)) for m in HPO_SHOWN},
            "trials": len(mine), "stopped early": stopped,
            "tied at best": sum(t.values[HPO_SELECT] == chosen.values[HPO_SELECT] for t in scored), "run": chosen.name,
            **{k: f"{float(chosen.params[k]):.3g}" for k in ("lr", "w_l2", "w_ssim", "w_df") if k in chosen.params}}
    columns = [_hpo_header(m) for m in HPO_SHOWN] + ["trials", "stopped early", "tied at best", "run"]
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame = frame.reindex(columns=columns + [c for c in frame.columns if c not in columns]).fillna(MISSING)
    frame.index.name = "category"
    notes = [f"Chosen by {HPO_SELECT} (%): the trial's own synthetic anomalies on its held-out share of "
             "train/good (val_fraction, docs/detector.md §5.3); Optuna and ASHA saw nothing else. The test "
             "columns are that trial's test split, measured once at its end and never used to choose. "
             "Only trials that ran to their end are ranked (ASHA stops some early). Ties on "
             f"{HPO_SELECT} ('tied at best' counts the trials that share the best value) are broken by "
             f"{HPO_TIE_BREAK}, then by run name. "
             "The validation anomalies are synthetic, so its ranking can differ from the test split's."]
    return [Table("hpo_best", "Best trial per category by validation image AUROC, with its test-split metrics",
                  frame, notes)]


def _hpo_header(metric: str) -> str:
    return f"{metric.removeprefix('val_')} (val)" if metric.startswith("val_") else f"{metric} (test)"


def _fmt_value(value) -> str:
    if value == UNAVAILABLE:
        return UNAVAILABLE
    return MISSING if not isinstance(value, float) or math.isnan(value) else f"{100 * value:.2f}"


# ---------------------------------------------------------------- helpers

def _trial(run) -> Trial:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    values = {**{k: v for k, v in tags.items() if v == UNAVAILABLE}, **metrics}
    why = {k: tags[f"{k}_note"] for k, v in values.items() if v == UNAVAILABLE and f"{k}_note" in tags}
    return Trial(name=tags.get("trial_name", run.info.run_name), category=params.get("category", "?"),
                 group=params.get("group", tags.get("group", "?")), seed=int(params.get("seed", 0)),
                 status=run.info.status, params=params, values=values, run_id=run.info.run_id,
                 skipped=tags.get("skipped", ""), why_unavailable=why,
                 classifier_from_scratch=(tags.get("classifier_init_note", "")
                                          if tags.get("classifier_init") == "scratch" else ""))


def _ordered_groups(planned: list[Planned]) -> list[str]:
    """Ablation rows in their natural order (row 2 .. row 8; factorial in plan order)."""
    order = list(dict.fromkeys(p.group for p in planned))

    def key(group: str):
        row = group.split()[1] if group.startswith("row ") else ""
        return (0, int(row), order.index(group)) if row.isdigit() else (1, 0, order.index(group))
    return sorted(order, key=key)


@dataclass
class Cell:
    """One (category, group) cell: the planned seeds and the finished seeds' values."""
    planned: list[int]
    values: dict                 # seed -> float; a cell with any "unavailable" value is UNAVAILABLE

    @property
    def unavailable(self) -> bool:
        return any(v == UNAVAILABLE for v in self.values.values())


def _cells(planned: list[Planned], runs: dict[str, Trial], metric: str) -> dict[tuple[str, str], Cell]:
    """(category, group) -> Cell, from the plan; only finished runs with a number fill a seed."""
    cells: dict[tuple[str, str], Cell] = {}
    for p in planned:
        cell = cells.setdefault((p.category, p.group), Cell([], {}))
        cell.planned.append(p.seed)
        run = runs.get(p.name)
        if run is None or run.status != "FINISHED":
            continue
        value = run.values.get(metric)
        if value == UNAVAILABLE:
            cell.values[p.seed] = UNAVAILABLE
        elif value is not None and not (isinstance(value, float) and math.isnan(value)):
            cell.values[p.seed] = float(value)
    return cells


def _fmt_cell(cell: Cell, pm: bool = False, scale: float = 100, digits: int = 2) -> str:
    """A category's cell: the mean (± std) over its finished seeds, with n/N when some are missing."""
    if cell.unavailable:
        return UNAVAILABLE
    values = list(cell.values.values())
    text = (_fmt_pm if pm else _fmt_mean)(values or None, scale=scale, digits=digits)
    return text if len(values) in (0, len(cell.planned)) else f"{text} ({len(values)}/{len(cell.planned)})"


def _fmt_over(cells: dict[tuple[str, str], Cell], group: str, by_seed: bool) -> str:
    """The mean of a group over categories, with n/N = finished of planned (category, seed) pairs.
    by_seed: one value per seed number (the mean over the categories finished for that seed), so
    the ± is the std over seeds; else the mean of the categories' seed means."""
    mine = [cell for (_, g), cell in cells.items() if g == group]
    if any(cell.unavailable for cell in mine):
        return UNAVAILABLE
    n = sum(len(cell.values) for cell in mine)
    total = sum(len(cell.planned) for cell in mine)
    if by_seed:
        seeds = sorted({s for cell in mine for s in cell.values})
        values = [statistics.mean(cell.values[s] for cell in mine if s in cell.values) for s in seeds]
        text = _fmt_pm(values or None)
    else:
        text = _fmt_mean([statistics.mean(cell.values.values()) for cell in mine if cell.values] or None)
    return f"{text} ({n}/{total})"


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

"""The report of ``gumbel reproduce``: per item its table, figures and claims, written as

    OUT/tables/{item}.md and .csv     the table (mean ± sample std over seeds) and its claims
    OUT/tables/runs.csv               every finished run's own metrics, one line per seed
    OUT/figures/figure_*.png          the figures
    OUT/report.html                   all of it, self-contained (images embedded)

Everything is rebuilt from the run folders each time, so the report always shows what the runs
hold now; unfinished runs are listed as such.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.data.synthetic import ANNOTATION_FILES, group_summary
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.claims import (
    CONTRADICTED,
    HOLDS,
    Verdict,
    adjust,
    format_p,
    judge,
    verdict_text,
)
from gumbel_analysis.experiments.material import Item
from gumbel_analysis.experiments.measure import Figure, ItemContext, Measured, measure_runs
from gumbel_analysis.experiments.reproduce import Plan, data_folder, read_timings
from gumbel_analysis.experiments.runs import FINISHED, run_activation
from gumbel_analysis.experiments.tabular import (
    Difference,
    Table,
    csv_value,
    table,
    to_csv,
    to_html,
    to_markdown,
)
from gumbel_analysis.groups import FREQUENCY_GROUPS, GROUP_NAMES
from gumbel_analysis.io import atomic_path
from gumbel_analysis.paper import PAPER_METRICS

METRICS = PAPER_METRICS  # AP, APr, APc, APf, APb


@dataclass
class Section:
    """One item's part of the report."""

    item: Item
    command: str
    table: Table
    figures: list[Figure] = field(default_factory=list)
    extra: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)


# --- tables of the items ------------------------------------------------------------------------


def _state(measured: Measured, plan: Plan, name: str, schedule: str) -> str:
    """``3`` (finished runs) or ``2 of 3, 1 unfinished`` and the like."""
    runs = measured.runs.get((name, schedule), [])
    done = sum(r.status == FINISHED for r in runs)
    text = str(done) if done == len(plan.seeds) else f"{done} of {len(plan.seeds)}"
    others = sorted({r.status for r in runs if r.status != FINISHED})
    missing = len(plan.seeds) - len(runs)
    notes = [f"{sum(r.status == s for r in runs)} {s}" for s in others]
    if missing:
        notes.append(f"{missing} not started")
    return text + (f" ({', '.join(notes)})" if notes else "")


def item_metrics_table(item: Item, measured: Measured, plan: Plan) -> Table:
    """An item's table in the paper's layout: a row per configuration, its AP metrics as mean ±
    std over seeds, the difference to the baseline (``*``: beyond the spread) and the paper's
    own numbers."""
    columns = ["configuration", "loss", "act.", "sampler", "Enh", "seeds", *METRICS]
    if item.baseline:
        columns += ["ΔAP", "ΔAPr"]
    if item.paper:
        columns += ["paper AP", "paper APr"]
    rows = []
    for config in (*item.configs, *item.derived):
        key = (config.name, item.schedule)
        runs = measured.runs.get(key, [])
        cfg = runs[0].config if runs else {}
        if config in item.derived:  # computed by the item's measure: its seeds measured
            seeds = len(measured.by_seed(config.name, item.schedule, "AP"))
            state = f"{seeds} of {len(plan.seeds)} (calibrated)"
        else:
            state = _state(measured, plan, config.name, item.schedule)
        row: list[Any] = [
            config.label,
            config.loss,
            # A row not run yet shows the activation it will train with (its loss's default).
            run_activation(cfg or {"loss": config.loss, "activation": config.activation}),
            config.sampler,
            "✓" if config.enh else "",
            state,
        ]
        row += [measured.stat(config.name, item.schedule, m) for m in METRICS]
        if item.baseline:
            for m in ("AP", "APr"):
                here = measured.stat(config.name, item.schedule, m)
                base = measured.stat(item.baseline, item.schedule, m)
                if not (here and base) or config.name == item.baseline:
                    row.append(None)
                    continue
                delta = measured.difference(config.name, item.baseline, item.schedule, m)
                row.append(Difference(delta) if delta else None)
        if item.paper:
            paper = item.paper.get(config.name)
            row += [paper[0], paper[1]] if paper else [None, None]
        rows.append(row)
    caption = (
        f"Mask AP (%) on the benchmark's val split, {_schedule_words(item, plan)}; mean ± "
        "sample std over seeds (no ± with one seed)."
    )
    if item.baseline:
        base_label = next(c.label for c in item.configs if c.name == item.baseline)
        caption += (
            f" Δ: difference to {base_label}; * where Student's t test of it rejects at 5% "
            "(two-sided; paired over seeds where both ran the same seeds, else Welch's; per "
            "cell, unadjusted: the claims below are the adjusted verdicts)."
        )
    if item.paper:
        caption += " paper: the supplementary material's LVIS v1 numbers (ResNet-50)."
    if item.note:
        caption += " " + item.note
    return table(columns, rows, caption)


def claims_table(verdicts: list[Verdict]) -> Table:
    """Each claim, what the paper reports and its verdict here, with its raw and adjusted p."""
    rows = [
        [
            v.claim.text,
            v.claim.paper,
            verdict_text(v),
            format_p(v.p) if v.p is not None else None,
            format_p(v.p_adjusted) if v.p_adjusted is not None else None,
        ]
        for v in verdicts
    ]
    return table(["claim", "paper", "on this benchmark", "p", "Holm p"], rows)


#: The columns of OUT/tables/claims.csv, from Verdict.as_dict.
CLAIM_FIELDS = (
    "item", "claim", "metric", "paper", "verdict", "against", "delta", "se", "test", "t", "df",
    "p", "p_holm", "claims_adjusted_over", "n", "seeds_needed",
)  # fmt: skip


def claims_csv(sections: list[Section]) -> str:
    """Every claim of the report, one line each: its verdict, Δ, SE, the test (paired or
    Welch), t, df, the raw p and Holm's adjusted p."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CLAIM_FIELDS)
    for section in sections:
        for v in section.verdicts:
            record = v.as_dict() | {"item": section.item.key}
            record["n"] = " ".join(map(str, record["n"]))
            writer.writerow([csv_value(record[k]) for k in CLAIM_FIELDS])
    return buffer.getvalue()


#: The columns of OUT/tables/runs.csv before the metrics.
RUN_FIELDS = ("run", "config", "schedule", "seed", "seconds")


def runs_csv(plan: Plan, measured: Measured) -> str:
    """Every finished run of the plan, one line each: its folder's name, configuration,
    schedule, seed, training wall time (timings.json; empty if not timed) and metrics, so the
    per-seed values behind the tables and the tests outlive the run folders."""
    timings = read_timings(plan.out)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*RUN_FIELDS, *METRICS))
    for planned in plan.runs:
        run = measured.finished(planned.config.name, planned.schedule).get(planned.run.seed)
        if run is None:
            continue
        values = [(run.metrics or {}).get(m) for m in METRICS]
        fields = (planned.run.name, planned.config.name, planned.schedule, planned.run.seed)
        writer.writerow(
            [*map(csv_value, fields), csv_value(timings.get(planned.run.name))]
            + [csv_value(float(v)) if isinstance(v, int | float) else "" for v in values]
        )
    return buffer.getvalue()


def _schedule_words(item: Item, plan: Plan) -> str:
    if plan.quick:
        return (
            f"--quick: shortened {item.schedule} schedule, detections scoring above "
            f"{material.QUICK_SCORE_THRESHOLD:g} (not the material's numbers)"
        )
    return f"schedule {item.schedule}"


def command_of(item: Item, plan: Plan) -> str:
    parts = ["gumbel reproduce", f"--out {plan.out}", f"--only {item.key}"]
    if len(plan.seeds) != 1 or plan.seeds[0] != 0:
        parts.append(f"--seeds {len(plan.seeds)}")
    if plan.seeds and plan.seeds[0] != 0:
        parts.append(f"--seed {plan.seeds[0]}")
    if plan.quick:
        parts.append("--quick")
    if any(p.run.values.get("amp") for p in plan.runs):
        parts.append("--amp")  # another recipe's numbers (docs/reproduce.md)
    return " ".join(parts)


# --- building and writing -----------------------------------------------------------------------


def build_sections(plan: Plan, figures_dir: Path) -> tuple[list[Section], Measured]:
    """Measure every item, draw its figures into ``figures_dir`` and judge its claims. Every
    item is measured before anything is drawn, so a measurement that refuses (a run without its
    gradient log) leaves no ``figures_dir`` behind."""
    measured = measure_runs(plan)
    contexts = [
        ItemContext(item, measured, data_folder(plan.out), figures_dir) for item in plan.items
    ]
    measurements = [ctx.item.measure(ctx) for ctx in contexts]
    figures_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for ctx, measurement in zip(contexts, measurements, strict=True):
        item = ctx.item
        section = Section(item, command_of(item, plan), item_metrics_table(item, measured, plan))
        section.extra = list(measurement.tables)
        section.figures = list(item.draw(ctx, measurement))
        section.verdicts = [judge(c, measured, item.schedule) for c in item.claims]
        sections.append(section)
    # One family: Holm over every claim the report judges.
    adjusted = iter(adjust([v for s in sections for v in s.verdicts]))
    for section in sections:
        section.verdicts = [next(adjusted) for _ in section.verdicts]
    return sections, measured


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_report(plan: Plan, total_seconds: float | None = None) -> dict[str, Any]:
    """Write the tables, figures and report.html; return a summary (paths, verdicts)."""
    out = plan.out
    sections, measured = build_sections(plan, out / "figures")
    tables_dir = out / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        md = [f"# {section.item.title}\n", f"`{section.command}`\n", to_markdown(section.table)]
        md += [to_markdown(t) for t in section.extra]
        if section.verdicts:
            md += ["## Claims\n", to_markdown(claims_table(section.verdicts))]
        _write_text(tables_dir / f"{section.item.key}.md", "\n".join(md))
        _write_text(tables_dir / f"{section.item.key}.csv", to_csv(section.table))
    _write_text(tables_dir / "claims.csv", claims_csv(sections))
    _write_text(tables_dir / "runs.csv", runs_csv(plan, measured))
    timed, run_seconds = _timed_runs(plan)
    report = out / "report.html"
    _write_text(report, render_html(plan, sections, total_seconds, timed, run_seconds))
    return {
        "out": str(out),
        "report": str(report),
        "tables": [str(tables_dir / f"{s.item.key}.md") for s in sections],
        "figures": [str(p) for s in sections for _, p in s.figures],
        "claims": [v.as_dict() | {"item": s.item.key} for s in sections for v in s.verdicts],
        "seeds": plan.seeds,
        "quick": plan.quick,
        "run_seconds": run_seconds,
        "runs": len(plan.runs),
        "runs_timed": timed,
    }


def _timed_runs(plan: Plan) -> tuple[int, float | None]:
    """How many of the plan's runs timings.json holds, and their total seconds (None: none)."""
    timings = read_timings(plan.out)
    spans = [timings[p.run.name] for p in plan.runs if p.run.name in timings]
    return len(spans), (round(sum(spans), 1) if spans else None)


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:70rem;
margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.5rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
caption{caption-side:bottom;text-align:left;font-size:.8rem;color:#555;padding-top:.3rem}
td.up{background:#e6f4ea}td.down{background:#fce8e6}
pre{background:#f6f8fa;padding:.5rem;overflow-x:auto;font-size:.85rem}
figure{margin:1rem 0}figure img{max-width:100%}figcaption{font-size:.85rem;color:#555}
.holds{color:#137333;font-weight:600}.contradicted{color:#a50e0e;font-weight:600}
.not{color:#8a6d00}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>"


def _verdict_html(v: Verdict) -> str:
    cls = {HOLDS: "holds", CONTRADICTED: "contradicted"}.get(v.verdict, "not")
    return (
        f"<li>{html.escape(v.claim.text)} (paper: {html.escape(v.claim.paper)}): "
        f"<span class='{cls}'>{html.escape(verdict_text(v))}</span></li>"
    )


def _data_table(plan: Plan) -> str:
    folder = data_folder(plan.out) / "annotations"
    train = read_json(folder / ANNOTATION_FILES["train"])
    val = read_json(folder / ANNOTATION_FILES["val"])
    summary = group_summary(train, val)
    keys = ("classes", "train_images", "val_images", "val_instances")
    rows = [[GROUP_NAMES[g], *(summary[g][k] for k in keys)] for g in FREQUENCY_GROUPS]
    return to_html(
        table(
            ["group", "classes", "train images", "val images", "val instances"],
            [[str(c) for c in r] for r in rows],
            f"make-data key {material.BENCHMARK.key()}",
        )
    )


_TEST_HTML = (
    "Each claim is judged by Student's t test of its difference over seeds, two-sided at 5%: "
    "paired over seeds when both sides ran the same seeds (SE of the mean per-seed difference, "
    "df = n &minus; 1), else Welch's test (Welch-Satterthwaite df). A claim that a "
    "configuration is the best of several needs every comparison to reject (its p is the "
    "largest of theirs); a rival that beats it contradicts it (the smallest p times the number "
    "of comparisons). The report judges all its claims at once, so each p is adjusted by "
    "Holm-Bonferroni over them (the chance of any false verdict is at most 5%): a claim "
    "<b>holds</b> when its adjusted p is below 0.05 and the difference is in the paper's "
    "direction, is <b>contradicted</b> when it is below 0.05 in the other, and is <b>not "
    "established</b> otherwise, whatever its sign (always with one seed: no spread). The "
    "cells' * in the tables are the unadjusted tests of each difference."
)


def render_html(
    plan: Plan,
    sections: list[Section],
    total_seconds: float | None,
    timed: int,
    run_seconds: float | None,
) -> str:
    spec = material.BENCHMARK
    seeds = ("seed " if len(plan.seeds) == 1 else "seeds ") + ", ".join(map(str, plan.seeds))
    timing = ""
    if run_seconds is not None:
        timing = (
            f" Training and evaluating {timed} of its {len(plan.runs)} runs took "
            f"{run_seconds / 60:.1f} min of run time in all, the sum over runs (timings.json; "
            "runs side by side take less wall time; runs trained by other means are not timed)."
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>gumbel reproduce: the supplementary material on the embedded benchmark</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>The supplementary material, reproduced on the embedded benchmark</h1>",
        "<p>Every table and figure below was made by <code>gumbel reproduce</code> from the run "
        f"folders in <code>{html.escape(str(plan.out / 'runs'))}</code> "
        f"({seeds}{', --quick' if plan.quick else ''}).{timing} "
        f"{_TEST_HTML}</p>",
        "<h2>The benchmark</h2>",
        f"<p>Synthetic long-tailed LVIS-format data: {spec.classes} classes, "
        f"{spec.train_images} training and {spec.val_images} validation images of "
        f"{spec.size} px, at least {spec.val_min_images} validation images per class. "
        f"<code>gumbel make-data DIR --classes {spec.classes} --train-images {spec.train_images} "
        f"--val-images {spec.val_images} --val-min-images {spec.val_min_images}</code></p>",
        _data_table(plan),
    ]
    if plan.quick:
        parts.append(
            "<p class='contradicted'>--quick: shortened schedules, for trying the command out; "
            "these are not the material's numbers.</p>"
        )
    claims = [(s, v) for s in sections for v in s.verdicts]
    if claims:
        parts.append("<h2>The paper's claims on this benchmark</h2><ul>")
        parts += [_verdict_html(v) for _, v in claims]
        parts.append("</ul>")
    for section in sections:
        parts.append(f"<h2 id='{section.item.key}'>{html.escape(section.item.title)}</h2>")
        parts.append(f"<pre>{html.escape(section.command)}</pre>")
        parts.append(to_html(section.table))
        parts += [to_html(t) for t in section.extra]
        for caption, path in section.figures:
            parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption>")
            parts.append("</figure>")
        if section.verdicts:
            parts.append("<ul>" + "".join(_verdict_html(v) for v in section.verdicts) + "</ul>")
    if total_seconds is not None and math.isfinite(total_seconds):
        parts.append(f"<p>This invocation took {total_seconds / 60:.1f} min.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

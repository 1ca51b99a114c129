"""The report of ``gumbel reproduce``: per item its table, figures and claims, written as

    OUT/tables/{item}.md and .csv     the table (mean ± sample std over seeds) and its claims
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
from gumbel_analysis.experiments.material import Item
from gumbel_analysis.experiments.reproduce import (
    CONTRADICTED,
    HOLDS,
    Measured,
    Plan,
    Verdict,
    difference,
    judge,
    measure_gradients,
    measure_kl,
    measure_runs,
    read_timings,
    verdict_text,
)
from gumbel_analysis.experiments.runs import FINISHED
from gumbel_analysis.experiments.table import SPREAD_FACTOR, Delta, Stat
from gumbel_analysis.io import atomic_path
from gumbel_analysis.paper import PAPER_CLIP, PAPER_METRICS, PAPER_SIGMAS

METRICS = PAPER_METRICS  # AP, APr, APc, APf, APb
GROUP_LABELS = {"all": "all", "r": "rare", "c": "common", "f": "frequent"}


@dataclass
class Table:
    """Rows of cells: str, Stat (mean ± std), a (delta, Delta) pair, or None (empty)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    digits: int = 1


@dataclass
class Section:
    item: Item
    command: str
    table: Table
    figures: list[tuple[str, Path]] = field(default_factory=list)
    extra: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)


# --- cells --------------------------------------------------------------------------------------


def _cell_text(cell: Any, digits: int) -> str:
    if cell is None:
        return "–"
    if isinstance(cell, Stat):
        text = f"{cell.mean:.{digits}f}"
        return text + (f" ± {cell.std:.{digits}f}" if cell.std is not None else "")
    if isinstance(cell, tuple):  # (Delta, marker)
        delta = cell[0]
        mark = "" if delta.exceeds is None else ("*" if delta.exceeds else "")
        return f"{delta.delta:+.{digits}f}{mark}"
    if isinstance(cell, float):
        return f"{cell:.{digits}f}"
    return str(cell)


def _csv_cells(columns: list[str], row: list[Any]) -> dict[str, dict[str, str]]:
    """Per column, its CSV fields: the value, and ``_std``/``_n`` or ``_se``/``_exceeds``."""
    cells: dict[str, dict[str, str]] = {}
    for name, cell in zip(columns, row, strict=True):
        out = cells[name] = {}
        if isinstance(cell, Stat):
            out[name] = repr(cell.mean)
            out[f"{name}_std"] = "" if cell.std is None else repr(cell.std)
            out[f"{name}_n"] = str(cell.n)
        elif isinstance(cell, tuple):
            delta = cell[0]
            out[name] = repr(delta.delta)
            out[f"{name}_se"] = "" if delta.se is None else repr(delta.se)
            out[f"{name}_exceeds"] = "" if delta.exceeds is None else str(delta.exceeds).lower()
        elif cell is None:
            out[name] = ""
        else:
            out[name] = str(cell)
    return cells


def to_markdown(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

    lines = [line(table.columns), "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += [line([_cell_text(c, table.digits) for c in row]) for row in table.rows]
    return "\n".join(lines) + ("\n\n" + table.caption if table.caption else "") + "\n"


def to_csv(table: Table) -> str:
    rows = [_csv_cells(table.columns, row) for row in table.rows]
    header: list[str] = []
    for column in table.columns:  # each column's fields side by side, in the columns' order
        for row in rows:
            header += [k for k in row[column] if k not in header]
    rows = [{k: v for fields in row.values() for k, v in fields.items()} for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for cell in row:
            cls = ""
            if isinstance(cell, tuple) and cell[0].exceeds:
                cls = " class='up'" if cell[0].delta > 0 else " class='down'"
            text = html.escape(_cell_text(cell, table.digits))
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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


def metrics_table(item: Item, measured: Measured, plan: Plan) -> Table:
    """The paper's layout: a row per configuration, the metrics as mean ± std over seeds, the
    difference to the baseline (``*``: beyond 2 SE) and the paper's own numbers."""
    columns = ["configuration", "loss", "act.", "sampler", "Enh", "seeds", *METRICS]
    if item.baseline:
        columns += ["ΔAP", "ΔAPr"]
    if item.paper:
        columns += ["paper AP", "paper APr"]
    rows = []
    for config in item.configs:
        key = (config.name, item.schedule)
        runs = measured.runs.get(key, [])
        cfg = runs[0].config if runs else {}
        row: list[Any] = [
            config.label,
            config.loss,
            cfg.get("activation") or config.activation or "",
            config.sampler,
            "✓" if config.enh else "",
            _state(measured, plan, config.name, item.schedule),
        ]
        row += [measured.stat(config.name, item.schedule, m) for m in METRICS]
        if item.baseline:
            for m in ("AP", "APr"):
                here = measured.stat(config.name, item.schedule, m)
                base = measured.stat(item.baseline, item.schedule, m)
                if not (here and base) or config.name == item.baseline:
                    row.append(None)
                    continue
                delta, se = difference(measured, config.name, item.baseline, item.schedule, m)
                exceeds = None if se is None else abs(delta) > SPREAD_FACTOR * se
                row.append((Delta(delta, se, exceeds), ""))
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
            f" Δ: difference to {base_label}; * where |Δ| > 2 SE (SE of the per-seed "
            "differences where both ran the same seeds, else Welch's)."
        )
    if item.paper:
        caption += " paper: the supplementary material's LVIS v1 numbers (ResNet-50)."
    if item.note:
        caption += " " + item.note
    return Table(columns, rows, caption)


def gradient_table(item: Item, measured: Measured) -> Table:
    columns = ["run", *(f"{GROUP_LABELS[g]} (dB)" for g in ("all", "r", "c", "f"))]
    rows = []
    for config in item.configs:
        rows.append(
            [
                config.label,
                *(
                    measured.stat(config.name, item.schedule, f"grad_{g}")
                    for g in ("all", "r", "c", "f")
                ),
            ]
        )
    from gumbel_analysis.analysis.gradients import DEFAULT_DB_SCALE

    caption = (
        f"Mean positive gradient per category in dB ({DEFAULT_DB_SCALE}·log10, as gumbel grads), "
        "averaged over each group's categories (mean ± std over seeds). Paper: Gumbel − Sigmoid "
        "about +7 dB overall, +10 dB rare."
    )
    return Table(columns, rows, caption, digits=2)


def kl_table(item: Item, measured: Measured) -> Table:
    columns = ["run", "mean KL per image (nats)"]
    rows = [
        [config.label, measured.stat(config.name, item.schedule, "kl_mean")]
        for config in item.configs
    ]
    caption = "KL(target ‖ predicted) per val image, mean over images (mean ± std over seeds)."
    return Table(columns, rows, caption, digits=3)


def claims_table(verdicts: list[Verdict]) -> Table:
    rows = [[v.claim.text, v.claim.paper, verdict_text(v)] for v in verdicts]
    return Table(["claim", "paper", "on this benchmark"], rows)


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
    return " ".join(parts)


# --- building and writing -----------------------------------------------------------------------


def build_sections(plan: Plan, figures_dir: Path) -> tuple[list[Section], Measured]:
    """Measure every item and draw its figures into ``figures_dir``."""
    from gumbel_analysis.experiments.sweep import plot_sweep

    measured = measure_runs(plan)
    data = plan.out / "data"
    figures_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for item in plan.items:
        section = Section(item, command_of(item, plan), metrics_table(item, measured, plan))
        if item.key == "fig1":
            from gumbel_analysis.analysis.temperature import plot_temperature

            path = figures_dir / "figure_1i.png"
            plot_temperature(list(PAPER_SIGMAS), *PAPER_CLIP, path)
            section.figures.append(("(i) the Gumbel activation per temperature σ", path))
            points = _sweep_points(item, measured)
            if points:
                path = figures_dir / "figure_1ii.png"
                plot_sweep(points, path, f"Fig. 1.ii on the benchmark ({item.schedule})")
                section.figures.append(("(ii) AP and APr against σ", path))
        elif item.key == "fig2":
            comparison = measure_gradients(measured, item)
            section.extra.append(gradient_table(item, measured))
            if comparison is not None:
                from gumbel_analysis.analysis.gradients import plot_gradients

                path = figures_dir / "figure_2.png"
                plot_gradients(comparison, path)
                section.figures.append(("mean positive gradient per category (first seed)", path))
        elif item.key == "fig3":
            comparison = measure_kl(measured, item, data)
            section.extra.append(kl_table(item, measured))
            if comparison is not None:
                from gumbel_analysis.analysis.kl_plot import plot_kl_dist

                path = figures_dir / "figure_3.png"
                plot_kl_dist(comparison, path, data / "images")
                section.figures.append(("per-image category distributions (first seed)", path))
        section.verdicts = [judge(c, measured, item.schedule) for c in item.claims]
        sections.append(section)
    return sections, measured


def _sweep_points(item: Item, measured: Measured) -> list[dict[str, Any]]:
    points = []
    for config, sigma in zip(item.configs, PAPER_SIGMAS, strict=True):
        stats = {m: measured.stat(config.name, item.schedule, m) for m in ("AP", "APr")}
        if all(s is None for s in stats.values()):
            continue
        point: dict[str, Any] = {"temperature": sigma}
        point.update({m: s.as_dict() if s else None for m, s in stats.items()})
        points.append(point)
    return points


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_report(plan: Plan, total_seconds: float | None = None) -> dict[str, Any]:
    """Write the tables, figures and report.html; return a summary (paths, verdicts)."""
    out = plan.out
    sections, _ = build_sections(plan, out / "figures")
    tables_dir = out / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        md = [f"# {section.item.title}\n", f"`{section.command}`\n", to_markdown(section.table)]
        md += [to_markdown(t) for t in section.extra]
        if section.verdicts:
            md += ["## Claims\n", to_markdown(claims_table(section.verdicts))]
        _write_text(tables_dir / f"{section.item.key}.md", "\n".join(md))
        _write_text(tables_dir / f"{section.item.key}.csv", to_csv(section.table))
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
    folder = plan.out / "data" / "annotations"
    train = read_json(folder / ANNOTATION_FILES["train"])
    val = read_json(folder / ANNOTATION_FILES["val"])
    summary = group_summary(train, val)
    keys = ("classes", "train_images", "val_images", "val_instances")
    rows = [[GROUP_LABELS[g], *(summary[g][k] for k in keys)] for g in ("r", "c", "f")]
    table = Table(
        ["group", "classes", "train images", "val images", "val instances"],
        [[str(c) for c in r] for r in rows],
        f"make-data key {material.BENCHMARK.key()}",
    )
    return to_html(table)


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
            f"{run_seconds / 60:.1f} min (timings.json; runs trained by other means are not timed)."
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>gumbel reproduce: the supplementary material on the embedded benchmark</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>The supplementary material, reproduced on the embedded benchmark</h1>",
        "<p>Every table and figure below was made by <code>gumbel reproduce</code> from the run "
        f"folders in <code>{html.escape(str(plan.out / 'runs'))}</code> "
        f"({seeds}{', --quick' if plan.quick else ''}).{timing} "
        "A claim <b>holds</b> when the difference exceeds twice its standard error over seeds "
        "(Welch) in the paper's direction, is <b>contradicted</b> when it does so in the other "
        "direction, and is <b>not established</b> otherwise, whatever its sign.</p>",
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

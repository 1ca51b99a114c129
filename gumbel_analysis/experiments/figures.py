"""The measure and draw of the material's figures (Figs. 1-3), which the items of
``experiments/material.py`` name. Each ``measure`` adds its per-seed values to the context's
:class:`~gumbel_analysis.experiments.measure.Measured` and returns the tables it adds; each
``draw`` writes PNG files into the folder ``ctx.figures``. The analyses themselves (and
matplotlib, torch) are imported only when they run.
"""

from __future__ import annotations

import math
from typing import Any

from gumbel_analysis.data.synthetic import ANNOTATION_FILES
from gumbel_analysis.experiments.measure import Figure, ItemContext, Measurement
from gumbel_analysis.experiments.tabular import Table, table
from gumbel_analysis.groups import FREQUENCY_GROUPS, GROUP_LABELS
from gumbel_analysis.paper import PAPER_CLIP, PAPER_GRADIENT_GAIN_DB, PAPER_SIGMAS
from gumbel_analysis.spec.layout import RunLayout

#: The groups of Fig. 2's values: all categories, then rare, common, frequent.
GRADIENT_GROUPS = ("all", *FREQUENCY_GROUPS)


def gradient_metric(group: str) -> str:
    """The name of Fig. 2's value of a group (``grad_all``, ``grad_r``, ...)."""
    return f"grad_{group}"


# --- Fig. 1: the temperature ---------------------------------------------------------------------


def draw_temperature(ctx: ItemContext, measurement: Measurement) -> list[Figure]:
    """Fig. 1.i (the activation per σ, with the paper's clip range) and Fig. 1.ii (AP and APr
    against σ over the item's runs, one per σ of PAPER_SIGMAS), where any run finished."""
    from gumbel_analysis.analysis.temperature import plot_temperature
    from gumbel_analysis.experiments.sweep import plot_sweep

    path = ctx.figures / "figure_1i.png"
    plot_temperature(list(PAPER_SIGMAS), *PAPER_CLIP, path)
    figures = [Figure("(i) the Gumbel activation per temperature σ", path)]
    points = _sweep_points(ctx)
    if points:
        path = ctx.figures / "figure_1ii.png"
        plot_sweep(points, path, f"Fig. 1.ii on the benchmark ({ctx.item.schedule})")
        figures.append(Figure("(ii) AP and APr against σ", path))
    return figures


def _sweep_points(ctx: ItemContext) -> list[dict[str, Any]]:
    item, measured = ctx.item, ctx.measured
    points = []
    for config, sigma in zip(item.configs, PAPER_SIGMAS, strict=True):
        stats = {m: measured.stat(config.name, item.schedule, m) for m in ("AP", "APr")}
        if all(s is None for s in stats.values()):
            continue
        point: dict[str, Any] = {"temperature": sigma}
        point.update({m: s.as_dict() if s else None for m, s in stats.items()})
        points.append(point)
    return points


# --- Fig. 2: the gradients -----------------------------------------------------------------------


def measure_gradients(ctx: ItemContext) -> Measurement:
    """Per seed, the mean positive gradient (dB) per frequency group of each of the item's runs,
    as ``grad_all``, ``grad_r``, ...; the table of them, and the first seed's comparison."""
    from gumbel_analysis.analysis.gradients import compare_logs, read_grad_log

    item, names = ctx.item, [c.name for c in ctx.item.configs]
    first = None
    for runs in ctx.measured.paired_seeds(names, item.schedule):
        logs = [read_grad_log(r.path) for r in runs]
        comparison = compare_logs(logs, [c.label for c in item.configs])
        for name, entry in zip(names, comparison.to_dict()["runs"], strict=True):
            for group in GRADIENT_GROUPS:
                value = entry["groups"][group]
                if math.isfinite(value):
                    metric = gradient_metric(group)
                    ctx.measured.add(name, item.schedule, metric, runs[0].seed, value)
        first = first or comparison
    return Measurement([_gradient_table(ctx)], first)


def _gradient_table(ctx: ItemContext) -> Table:
    from gumbel_analysis.analysis.gradients import DEFAULT_DB_SCALE

    item = ctx.item
    headers = ["run", *(f"{GROUP_LABELS[g]} (dB)" for g in GRADIENT_GROUPS)]
    rows = [
        [
            c.label,
            *(
                ctx.measured.stat(c.name, item.schedule, gradient_metric(g))
                for g in GRADIENT_GROUPS
            ),
        ]
        for c in item.configs
    ]
    gain = PAPER_GRADIENT_GAIN_DB
    caption = (
        f"Mean positive gradient per category in dB ({DEFAULT_DB_SCALE}·log10, as gumbel grads), "
        "averaged over each group's categories (mean ± std over seeds). Paper: Gumbel − Sigmoid "
        f"about {gain['all']:+g} dB overall, {gain['r']:+g} dB rare."
    )
    return table(headers, rows, caption, digits=2)


def draw_gradients(ctx: ItemContext, measurement: Measurement) -> list[Figure]:
    """Fig. 2 of the first seed that every run finished (none without one)."""
    if measurement.drawable is None:
        return []
    from gumbel_analysis.analysis.gradients import plot_gradients

    path = ctx.figures / "figure_2.png"
    plot_gradients(measurement.drawable, path)
    return [Figure("mean positive gradient per category (first seed)", path)]


# --- Fig. 3: the category distributions ----------------------------------------------------------


def measure_kl(ctx: ItemContext) -> Measurement:
    """Per seed, each run's mean per-image KL(target || predicted) as ``kl_mean``; the table of
    them, and the first seed's comparison."""
    from gumbel_analysis.analysis.kl import compare_runs

    item, names = ctx.item, [c.name for c in ctx.item.configs]
    gt = ctx.data / "annotations" / ANNOTATION_FILES["val"]
    first = None
    for runs in ctx.measured.paired_seeds(names, item.schedule):
        results = [RunLayout(r.path).results for r in runs]
        comparison = compare_runs(gt, results, [c.label for c in item.configs])
        for name, entry in zip(names, comparison.to_dict()["runs"], strict=True):
            if math.isfinite(entry["kl_mean"]):
                ctx.measured.add(name, item.schedule, "kl_mean", runs[0].seed, entry["kl_mean"])
        first = first or comparison
    rows = [[c.label, ctx.measured.stat(c.name, item.schedule, "kl_mean")] for c in item.configs]
    caption = "KL(target ‖ predicted) per val image, mean over images (mean ± std over seeds)."
    kl_table = table(["run", "mean KL per image (nats)"], rows, caption, digits=3)
    return Measurement([kl_table], first)


def draw_kl(ctx: ItemContext, measurement: Measurement) -> list[Figure]:
    """Fig. 3 of the first seed that every run finished (none without one)."""
    if measurement.drawable is None:
        return []
    from gumbel_analysis.analysis.kl_plot import plot_kl_dist

    path = ctx.figures / "figure_3.png"
    plot_kl_dist(measurement.drawable, path, ctx.data / "images")
    return [Figure("per-image category distributions (first seed)", path)]

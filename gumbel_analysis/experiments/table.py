"""Result tables: one row per configuration, mean and spread over seeds, deltas to a baseline.

Laid out as Tables 1-4 of the supplementary material: what was trained (loss, activation,
sampler, Enh, temperature, preset, schedule), then mask AP, AP^r, AP^c, AP^f and box AP^b.

Conventions (also in ``gumbel table --help`` and docs):

* A cell is ``mean ± s`` over the n finished runs of a configuration, ``s`` the sample standard
  deviation (ddof = 1): ``s = sqrt(sum (x_i - mean)^2 / (n - 1))``. With n = 1 there is no spread
  estimate and s is shown as ``–`` (null in JSON); an undefined AP (no ground truth in a group)
  is left out of that metric's mean, and a metric undefined in every run is ``–``.
* With a baseline, ``delta = mean - mean_0`` and Student's t test of it at a two-sided 5% level
  (``experiments/stats.py``): paired over seeds when the row and the baseline ran the same two
  or more seeds (``SE = s_d / sqrt(n)``, df = n - 1), else Welch's test
  (``SE = sqrt(s^2 / n + s_0^2 / n_0)``, Welch-Satterthwaite df). A delta the test rejects is
  marked ``*`` (``exceeds`` true in JSON); each cell is its own test, not adjusted for the
  others. If either side has a single run, there is no test and the delta is marked ``?``
  (``exceeds`` null).

The statistics are those of ``experiments/stats.py``; the table is written by the writers of
``experiments/tabular.py`` (:func:`cells_table` gives it their cells).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rich.console import Group
from rich.markup import escape

from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments import tabular
from gumbel_analysis.experiments.runs import (
    FAILED,
    FINISHED,
    IGNORED_FIELDS,
    Run,
    config_key,
    field_value,
    group_runs,
)
from gumbel_analysis.experiments.stats import ALPHA, Delta, Stat, difference, summarize
from gumbel_analysis.experiments.stats import is_number as _is_number

#: The metric columns of the paper's tables, in their order.
TABLE_METRICS = ("AP", "APr", "APc", "APf", "APb")
#: What each row says was trained, as the paper's tables do.
DESCRIPTORS = ("loss", "activation", "sampler", "enh", "temperature", "preset", "schedule")
#: Fields behind the descriptor columns (a differing one needs no column of its own).
_DESCRIBED = frozenset(DESCRIPTORS) | {"epochs", "lr_steps"}
FORMATS = ("rich", "markdown", "latex", "csv")
_HEADERS = {"temperature": "σ", "activation": "act.", "APr": "APr", "APb": "APb"}
DASH = tabular.DASH


@dataclass
class Row:
    """One configuration (its finished runs), or one run that is not finished."""

    status: str
    descriptors: dict[str, Any]
    config: dict[str, Any]
    runs: list[str]
    seeds: list[Any]
    metrics: dict[str, Stat | None] = field(default_factory=dict)
    deltas: dict[str, Delta | None] = field(default_factory=dict)
    # per metric its finite values by seed (by run where seeds repeat: those are not paired)
    values: dict[str, dict[Any, float]] = field(default_factory=dict)
    baseline: bool = False
    detail: str = ""
    varying: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs) if self.status == FINISHED else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "detail": self.detail or None,
            "baseline": self.baseline,
            **self.descriptors,
            "n": self.n,
            "runs": self.runs,
            "seeds": self.seeds,
            "metrics": {k: s.as_dict() if s else None for k, s in self.metrics.items()},
            "deltas": {k: d.as_dict() if d else None for k, d in self.deltas.items()}
            if self.deltas
            else None,
            "varying": self.varying or None,
            "config": self.config,
        }


@dataclass
class ResultTable:
    rows: list[Row]
    columns: list[str]  # descriptor columns shown, in order
    metrics: tuple[str, ...] = TABLE_METRICS
    has_baseline: bool = False
    digits: int = 1

    @property
    def finished_rows(self) -> list[Row]:
        return [r for r in self.rows if r.status == FINISHED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "metrics": list(self.metrics),
            "std": "sample standard deviation (ddof = 1); null for n = 1",
            "exceeds_rule": EXCEEDS_RULE if self.has_baseline else None,
            "rows": [r.as_dict() for r in self.rows],
        }


EXCEEDS_RULE = (
    f"Student t test of delta, two-sided p < {ALPHA:g}: paired over seeds when both rows ran "
    "the same 2+ seeds (df = n - 1), else Welch (Welch-Satterthwaite df); per cell, unadjusted"
)


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """The descriptor columns of a config (schedule: 1x/2x, else the epochs). The temperature
    is shown for the Gumbel activation only: a Sigmoid or Softmax run never used it."""
    out = {name: field_value(config, name) for name in DESCRIPTORS}
    if out["activation"] != "gumbel":
        out["temperature"] = None
    if out["schedule"] is None and config.get("epochs") is not None:
        out["schedule"] = f"{config['epochs']} ep"
    return out


def build_table(
    runs: Sequence[Run],
    *,
    baseline: Sequence[Run] | None = None,
    group_by: Sequence[str] | None = None,
    digits: int = 1,
) -> ResultTable:
    """Rows of ``runs`` (and ``baseline``'s runs, first): finished runs of one configuration
    become one row; every other run is a row of its own with its status."""
    fields = list(group_by) if group_by else None
    if fields is not None:
        known = set(DESCRIPTORS) | {k for r in [*runs, *(baseline or [])] for k in r.config}
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise InputError(
                f"--group-by: unknown field {unknown[0]!r}; use a config field such as "
                f"{', '.join(DESCRIPTORS)}"
            )
    base_key = _baseline_key(baseline, fields) if baseline is not None else None
    ordered = _unique([*(baseline or []), *runs])
    groups = group_runs(ordered, fields)
    if base_key is not None:
        groups.sort(key=lambda g: g.key != base_key)  # stable: the baseline first
    rows = [_group_row(g.runs, fields, g.key == base_key) for g in groups]
    rows += [_single_row(r) for r in ordered if not r.finished]
    if base_key is not None:
        base_row = rows[0]
        for row in rows[1:]:
            if row.status == FINISHED:
                row.deltas = {
                    m: difference(row.values[m], base_row.values[m])
                    if row.values.get(m) and base_row.values.get(m)
                    else None
                    for m in TABLE_METRICS
                }
    columns = list(fields) if fields is not None else _columns(rows)
    return ResultTable(rows, columns, TABLE_METRICS, base_key is not None, digits)


def _unique(runs: Sequence[Run]) -> list[Run]:
    seen: set = set()
    out = []
    for run in runs:
        real = run.path.resolve()
        if real not in seen:
            seen.add(real)
            out.append(run)
    return out


def _baseline_key(baseline: Sequence[Run], fields: list[str] | None) -> str:
    finished = [r for r in baseline if r.finished]
    if not finished:
        raise InputError("--baseline holds no finished run (no metrics.json)")
    keys = {config_key(r.config, fields) for r in finished}
    if len(keys) > 1:
        raise InputError(
            f"--baseline holds runs of {len(keys)} configurations; name the run folder(s) of one"
        )
    return keys.pop()


def _metric_names(runs: Sequence[Run]) -> list[str]:
    names: list[str] = list(TABLE_METRICS)
    for run in runs:
        for key, value in (run.metrics or {}).items():
            if key not in names and (value is None or _is_number(value)):
                names.append(key)
    return names


def _group_row(runs: list[Run], fields: list[str] | None, is_baseline: bool) -> Row:
    config = {k: v for k, v in runs[0].config.items() if k not in IGNORED_FIELDS}
    varying: dict[str, list[Any]] = {}
    if fields is not None:
        # Runs grouped by a few fields may differ in others: say which, never hide it.
        for key in sorted({k for r in runs for k in r.config} - IGNORED_FIELDS - set(fields)):
            values = _distinct(r.config.get(key) for r in runs)
            if len(values) > 1:
                varying[key] = values
        config = {k: v for k, v in config.items() if k not in varying}
    return Row(
        status=FINISHED,
        descriptors=describe(runs[0].config)
        if fields is None
        else {f: field_value(runs[0].config, f) for f in fields},
        config=config,
        runs=[str(r.path) for r in runs],
        seeds=[r.seed for r in runs],
        metrics={
            m: summarize([(r.metrics or {}).get(m) for r in runs]) for m in _metric_names(runs)
        },
        values={m: _by_seed(runs, m) for m in TABLE_METRICS},
        baseline=is_baseline,
        varying=varying,
    )


def _by_seed(runs: list[Run], metric: str) -> dict[Any, float]:
    """The runs' finite values of ``metric`` by seed, for pairing with the baseline's; by run
    (never paired) when a seed repeats or is unknown."""
    seeds = [r.seed for r in runs]
    unique = None not in seeds and len(set(seeds)) == len(seeds)
    out: dict[Any, float] = {}
    for i, run in enumerate(runs):
        value = (run.metrics or {}).get(metric)
        if _is_number(value) and math.isfinite(float(value)):
            out[run.seed if unique else ("run", i)] = float(value)
    return out


def _single_row(run: Run) -> Row:
    return Row(
        status=run.status,
        descriptors=describe(run.config),
        config=run.key_config(),
        runs=[str(run.path)],
        seeds=[run.seed],
        detail=run.detail,
    )


def _distinct(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _columns(rows: list[Row]) -> list[str]:
    """The descriptors, plus each other config field that tells two rows apart which would
    otherwise look the same (e.g. max_iters, lambda_)."""
    columns = list(DESCRIPTORS)
    finished = [r for r in rows if r.status == FINISHED]
    candidates = sorted({k for r in finished for k in r.config} - _DESCRIBED)
    for key in candidates:
        shown: dict[str, list[Any]] = {}
        for row in finished:
            label = repr([_shown(row, c) for c in columns])
            shown.setdefault(label, []).append(row.config.get(key))
        if any(len(_distinct(v)) > 1 for v in shown.values()):
            columns.append(key)
    return columns


def _shown(row: Row, column: str) -> Any:
    return row.descriptors[column] if column in row.descriptors else row.config.get(column)


# --- rendering: the table as cells of experiments/tabular.py -------------------------------------
def _text(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else DASH
    if isinstance(value, dict):
        return " ".join(f"{k}={_text(v)}" for k, v in value.items()) or DASH
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    return str(value)


def _csv(value: Any) -> str:
    if value is None or isinstance(value, bool | float):
        return tabular.csv_value(value)
    return _text(value)


def _value(value: Any) -> tabular.Plain:
    """A descriptor cell: its text (σ 1, enh no) and its CSV field (1.0, false)."""
    return tabular.Plain(_text(value), _csv(value))


def _status_text(row: Row) -> str:
    if row.status == FINISHED:
        return "baseline" if row.baseline else FINISHED
    return f"{row.status}: {row.runs[0]}"


def caption(table: ResultTable) -> str:
    text = (
        "AP in %: mean ± sample std (ddof = 1) over the n finished runs of a configuration "
        f"(seeds); {DASH} = undefined or n = 1."
    )
    if table.has_baseline:
        text += (
            " (Δ) to the baseline row; * = Student's t test of Δ rejects at 5% (two-sided; "
            "paired over seeds when both ran the same seeds, else Welch), no mark = not "
            "established, ? = a side has one run."
        )
    return text


def _header(name: str) -> str:
    return _HEADERS.get(name, name)


def _latex_metric(metric: str) -> str:
    """``AP$^{r}$`` for APr; AP stays AP."""
    return metric if metric == "AP" else metric.replace("AP", "AP$^{", 1) + "}$"


def _show_status(table: ResultTable) -> bool:
    return table.has_baseline or any(r.status != FINISHED for r in table.rows)


_CSV_ONLY = frozenset({"csv"})


def _columns_of(table: ResultTable) -> list[tabular.Column]:
    """Descriptors, metrics, n and status (shown where a row is not a plain finished one), and
    for CSV only the baseline flag, the runs and the seeds."""
    extra = ("delta", "se", "t", "df", "p", "exceeds") if table.has_baseline else ()
    columns = [tabular.Column(c, _header(c)) for c in table.columns]
    columns += [
        tabular.Column(
            m,
            right=True,
            latex=_latex_metric(m),
            fields=(m, f"{m}_std", *(f"{m}_{x}" for x in extra)),
        )
        for m in table.metrics
    ]
    status = tabular.WRITERS - {"rich"} if _show_status(table) else _CSV_ONLY
    columns += [tabular.Column("n", right=True), tabular.Column("status", show=status)]
    return columns + [tabular.Column(k, show=_CSV_ONLY) for k in ("baseline", "runs", "seeds")]


def _cells(table: ResultTable, row: Row) -> list[tabular.Cell]:
    cells: list[tabular.Cell] = [_value(_shown(row, c)) for c in table.columns]
    if row.status == FINISHED:
        cells += [
            tabular.MeanAndDifference(
                row.metrics.get(m), row.deltas.get(m) if row.deltas else None, table.has_baseline
            )
            for m in table.metrics
        ]
    else:  # no metrics: the terminal shows the status in the first metric column
        style = "red" if row.status == FAILED else "yellow"
        status = tabular.Plain("", "", f"[{style}]{row.status}[/]")
        cells += [status] + [tabular.Plain("", "")] * (len(table.metrics) - 1)
    n = str(row.n) if row.status == FINISHED else ""
    return [
        *cells,
        tabular.Plain(n, str(row.n)),
        tabular.Plain(_status_text(row), row.status),
        tabular.Plain(_csv(row.baseline)),
        tabular.Plain(";".join(row.runs)),
        tabular.Plain(";".join(_csv(s) for s in row.seeds)),
    ]


def cells_table(table: ResultTable) -> tabular.Table:
    """The table in the model the writers take (experiments/tabular.py)."""
    rows = [_cells(table, row) for row in table.rows]
    bold = frozenset(i for i, row in enumerate(table.rows) if row.baseline)
    return tabular.Table(_columns_of(table), rows, caption(table), table.digits, bold=bold)


def _notes(table: ResultTable) -> list[str]:
    """One line per run that is not finished: its status, path and why."""
    notes = []
    for row in table.rows:
        if row.status != FINISHED:
            style = "red" if row.status == FAILED else "yellow"
            detail = f" ({escape(row.detail)})" if row.detail else ""
            notes.append(f"[{style}]{row.status}[/]: {escape(row.runs[0])}{detail}")
    return notes


def to_rich(table: ResultTable, title: str = "Results") -> Group:
    """A rich table, then one line per run that is not finished (its path and why).

    Descriptor columns equal in every row move to the title, so that the numbers fit a terminal.
    """
    view = cells_table(table)
    same = [c for c in table.columns if len({_text(_shown(r, c)) for r in table.rows}) == 1]
    if same and table.rows:
        shared = ", ".join(f"{_header(c)} {_text(_shown(table.rows[0], c))}" for c in same)
        title = f"{escape(title)}\n[dim]{'all rows' if len(table.rows) > 1 else 'run'}: "
        title += f"{escape(shared)}[/]"
        view.columns = [
            replace(c, show=c.show - {"rich"}) if c.key in same else c for c in view.columns
        ]
    else:
        title = escape(title)
    note = caption(table)
    if table.has_baseline:
        note = "The first row (bold) is the baseline. " + note
    view.title, view.caption, view.notes = title, note, _notes(table)
    return tabular.to_rich(view)


def to_markdown(table: ResultTable) -> str:
    return tabular.to_markdown(cells_table(table))


def to_latex(table: ResultTable) -> str:
    return tabular.to_latex(cells_table(table))


def to_csv(table: ResultTable) -> str:
    """One line per row; per metric its mean, std (empty for n = 1 or undefined) and, with a
    baseline, delta and its test: se, t, df, p and exceeds (true/false, empty when unknown)."""
    order = [*table.columns, "n", "status", "baseline", "runs", "seeds", *table.metrics]
    return tabular.to_csv(cells_table(table), order)


def render(table: ResultTable, fmt: str) -> str:
    """The table as markdown, latex or csv text (rich goes through :func:`to_rich`)."""
    if fmt == "markdown":
        return to_markdown(table)
    if fmt == "latex":
        return to_latex(table)
    if fmt == "csv":
        return to_csv(table)
    raise InputError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")

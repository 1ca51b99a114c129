"""The rule of docs/reproduce.md for a recipe change, tests 2 and 3, on two Table 3 folders.

    python bench/recipe_rule.py CURRENT/table3 CANDIDATE/table3 [--json]

Each folder is a ``gumbel reproduce --only table3 --seeds 3`` OUT (its ``runs/CONFIG-1x-sS``),
trained with the current recipe and with the candidate on the same seeds.

* **spread** (revised 2026-12-04, docs/reproduce.md): the paired Gumbel - Sigmoid and Gumbel -
  Softmax differences on AP and APr are four cells; each cell's variance over the seeds is
  pooled per recipe (df = 4 (n - 1) each), and the one-sided F test of candidate / current
  must not reject at 5% (the spread has not grown beyond its noise). The per-cell sd ratios are
  shown, not judged: on 2 df each, a harmless change failed the old "every ratio <= 1.25" most
  of the time;
* **no move**: no configuration's AP, APr or APb moves between the recipes: the paired Student t
  test over the shared seeds (candidate - current, df = n - 1) rejects nowhere at 5% after Holm
  over the nine.

Test 1 (speed) is ``bench/reproduce_cost.py``. The candidate is taken only if all three hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scipy import stats as scipy_stats

from gumbel_analysis.experiments.stats import ALPHA, holm, paired

CONFIGS = ("sigmoid", "softmax", "gumbel")
METRICS = ("AP", "APr", "APb")
SPREAD_METRICS = ("AP", "APr")
PAIRS = (("gumbel", "sigmoid"), ("gumbel", "softmax"))


def read_table3(out: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{config: {seed: metrics}}`` of the finished 1x runs under ``out/runs``."""
    found: dict[str, dict[int, dict[str, float]]] = {c: {} for c in CONFIGS}
    for config in CONFIGS:
        for path in sorted((out / "runs").glob(f"{config}-1x-s*")):
            metrics = path / "metrics.json"
            if not metrics.is_file():
                continue
            try:
                values = json.loads(metrics.read_text())
                seed = int(path.name.rsplit("-s", 1)[1])
                found[config][seed] = {m: float(values[m]) for m in METRICS}
            except (ValueError, KeyError, TypeError):
                lacks = ", ".join(METRICS)
                raise SystemExit(f"error: {metrics} is corrupt or lacks {lacks}") from None
    return found


def judge(current: dict, candidate: dict) -> dict:
    seeds = sorted(
        set.intersection(*(set(side[c]) for side in (current, candidate) for c in CONFIGS))
    )
    if len(seeds) < 2:
        raise SystemExit("error: the two folders share fewer than 2 seeds of every configuration")
    spread = []
    for a, b in PAIRS:
        for m in SPREAD_METRICS:
            sd = {
                name: statistics.stdev([side[a][s][m] - side[b][s][m] for s in seeds])
                for name, side in (("current", current), ("candidate", candidate))
            }
            ratio = sd["candidate"] / sd["current"] if sd["current"] > 0 else float("inf")
            spread.append({"pair": f"{a} - {b}", "metric": m, **sd, "ratio": ratio})
    pooled = spread_test(spread, len(seeds))
    moves = []
    for c in CONFIGS:
        for m in METRICS:
            d = paired([candidate[c][s][m] - current[c][s][m] for s in seeds])
            moves.append(
                {
                    "config": c,
                    "metric": m,
                    "delta": d.delta,
                    "se": d.se,
                    "t": d.t,
                    "df": d.df,
                    "p": d.p,
                }
            )
    for row, p_holm in zip(moves, holm([r["p"] for r in moves]), strict=True):
        row["p_holm"] = p_holm
        row["moved"] = p_holm < ALPHA
    return {
        "seeds": seeds,
        "spread": spread,
        "spread_test": pooled,
        "moves": moves,
        "spread_holds": pooled["p"] >= ALPHA,
        "no_move_holds": not any(r["moved"] for r in moves),
    }


def spread_test(cells: list[dict], seeds: int) -> dict:
    """The pooled one-sided F test of the spread: the mean over the cells of each recipe's
    per-cell variance (each on ``seeds - 1`` df), candidate over current, against
    F(k (n - 1), k (n - 1)); p is the chance of a ratio this large or larger if the spread did
    not change. Cells sharing runs are not independent, so the test refuses somewhat more often
    than 5% for a harmless change: it errs toward keeping the current recipe."""
    df = len(cells) * (seeds - 1)
    current = statistics.fmean(c["current"] ** 2 for c in cells)
    candidate = statistics.fmean(c["candidate"] ** 2 for c in cells)
    ratio = candidate / current if current > 0 else float("inf")
    p = float(scipy_stats.f.sf(ratio, df, df)) if current > 0 else 0.0
    return {"variance_ratio": ratio, "sd_ratio": ratio**0.5, "df": df, "p": p}


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    """A rich table whose first two columns (names) are left-aligned, the numbers right."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("current", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for path in (args.current, args.candidate):
        if not (path / "runs").is_dir():
            sys.exit(f"error: {path} has no runs/ folder (a gumbel reproduce OUT)")
    verdict = judge(read_table3(args.current), read_table3(args.candidate))
    if args.json:
        print(json.dumps(verdict, indent=2))
        return
    console = Console()
    n = len(verdict["seeds"])
    console.print(
        _table(
            f"spread: sd over seeds {verdict['seeds']} of the paired difference",
            ("pair", "metric", "current", "candidate", "ratio"),
            [
                (
                    r["pair"],
                    r["metric"],
                    f"{r['current']:.2f}",
                    f"{r['candidate']:.2f}",
                    f"{r['ratio']:.2f}",
                )
                for r in verdict["spread"]
            ],
        )
    )
    test = verdict["spread_test"]
    console.print(
        f"pooled spread: sd ratio {test['sd_ratio']:.2f}, F({test['df']}, {test['df']}) = "
        f"{test['variance_ratio']:.2f}, one-sided p = {test['p']:.3f}"
    )
    console.print(
        _table(
            f"no move: candidate - current, paired t (n = {n}, df = {n - 1}), Holm/9",
            ("config", "metric", "Δ", "SE", "t", "p", "p Holm", "moved"),
            [
                (
                    r["config"],
                    r["metric"],
                    f"{r['delta']:+.2f}",
                    f"{r['se']:.2f}",
                    f"{r['t']:+.2f}",
                    f"{r['p']:.3f}",
                    f"{r['p_holm']:.3f}",
                    "yes" if r["moved"] else "no",
                )
                for r in verdict["moves"]
            ],
        )
    )
    console.print(
        f"spread test {'holds' if verdict['spread_holds'] else 'fails'}; "
        f"no-move test {'holds' if verdict['no_move_holds'] else 'fails'}"
    )


if __name__ == "__main__":
    main()

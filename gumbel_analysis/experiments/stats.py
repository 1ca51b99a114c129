"""The statistics of results over seeds, in one place: ``gumbel table`` and ``gumbel reproduce``
both call these.

* :func:`summarize`: mean and sample standard deviation (ddof = 1) of the finite values.
* :func:`difference`: the difference of two configurations' means and Student's t test of it,
  at a two-sided level of ``ALPHA`` = 5%:

  - **paired** when both sides ran the same two or more seeds (a pair shares its data order,
    augmentation and backbone initialisation): with the per-seed differences ``d_i``,
    ``SE = s_d / sqrt(n)``, ``t = mean(d) / SE`` on ``df = n - 1``;
  - **Welch** otherwise (:func:`compare`): ``SE = sqrt(s_a^2/n_a + s_b^2/n_b)``, ``t = Δ / SE``
    on the Welch-Satterthwaite ``df = SE^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``.

  ``p = 2 * P(T_df > |t|)``; the difference is significant (``Delta.exceeds``) when p < ALPHA.
  With one run on a side there is no spread: no SE, t, df or p.
* :func:`holm`: Holm-Bonferroni adjusted p values, for a report that judges many claims at once.
* :func:`seeds_to_resolve`: the seeds per side at which the same difference, with the same
  per-seed spread, would be significant (the df grows with the seeds, so t's quantile shrinks).

A zero spread (every seed gives the same difference) makes t infinite: such a difference is
significant (p = 0) unless it is zero too (p = 1); t is then not reported (null in JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats as _scipy_stats

#: The two-sided level of every test: a difference is significant when p < ALPHA.
ALPHA = 0.05
#: Above this many seeds, "seeds needed" is reported as "more than".
MAX_SEEDS_NEEDED = 1000
PAIRED, WELCH = "paired", "welch"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof = 1, None for n = 1) and count."""

    mean: float
    std: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass(frozen=True)
class Delta:
    """A difference of means and its Student t test (all None but ``delta`` without a spread).

    ``spread`` keeps what SE was made of, so that :func:`seeds_to_resolve` can ask what more
    seeds would give: paired ``(s_d^2,)``; Welch ``(s_a^2, s_b^2)``.
    """

    delta: float
    se: float | None = None
    t: float | None = None
    df: float | None = None
    p: float | None = None
    test: str | None = None
    n: tuple[int, int] = (0, 0)
    spread: tuple[float, ...] = ()

    @property
    def exceeds(self) -> bool | None:
        """Whether the test rejects "no difference" at ALPHA (None without a spread)."""
        return None if self.p is None else self.p < ALPHA

    def as_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "se": self.se,
            "t": self.t,
            "df": self.df,
            "p": self.p,
            "test": self.test,
            "exceeds": self.exceeds,
        }


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarize(values: Sequence[Any]) -> Stat | None:
    """Stat of the finite numbers in ``values`` (None when there is none)."""
    xs = [float(v) for v in values if is_number(v) and math.isfinite(float(v))]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return Stat(mean, std, n)


def two_sided_p(t: float, df: float) -> float:
    """``2 * P(T_df > |t|)`` of Student's t distribution with ``df`` degrees of freedom."""
    return float(min(1.0, 2.0 * _scipy_stats.t.sf(abs(t), df)))


def _tested(delta: float, se: float, df: float, **rest: Any) -> Delta:
    if se == 0.0:  # every seed agrees: t is infinite unless the difference is zero too
        return Delta(delta, se, None, df, 0.0 if delta != 0.0 else 1.0, **rest)
    t = delta / se
    return Delta(delta, se, t, df, two_sided_p(t, df), **rest)


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """The Welch-Satterthwaite degrees of freedom (``n_a + n_b - 2`` when both variances are 0,
    where the formula is 0/0 and the pooled test's df is the limit of equal variances)."""
    a, b = var_a / n_a, var_b / n_b
    denominator = a**2 / (n_a - 1) + b**2 / (n_b - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else float(n_a + n_b - 2)


def compare(row: Stat, base: Stat) -> Delta:
    """Welch's t test of ``row.mean - base.mean`` (no spread when a side has one run)."""
    delta = row.mean - base.mean
    if row.std is None or base.std is None:
        return Delta(delta, n=(row.n, base.n))
    var_a, var_b = row.std**2, base.std**2
    se = math.sqrt(var_a / row.n + var_b / base.n)
    df = welch_df(var_a, row.n, var_b, base.n)
    return _tested(delta, se, df, test=WELCH, n=(row.n, base.n), spread=(var_a, var_b))


def paired(differences: Sequence[float]) -> Delta:
    """The paired t test of per-seed differences (two or more): df = n - 1."""
    stat = summarize(differences)
    if stat is None or stat.std is None:
        raise ValueError("a paired test needs two or more differences")
    se = stat.std / math.sqrt(stat.n)
    return _tested(
        stat.mean, se, stat.n - 1, test=PAIRED, n=(stat.n, stat.n), spread=(stat.std**2,)
    )


def difference(a: Mapping[Any, float], b: Mapping[Any, float]) -> Delta | None:
    """Δ of the values of ``a`` over those of ``b`` (by seed), tested: paired when both sides have
    the same two or more seeds, else Welch (:func:`compare`). None when a side has no value."""
    if len(a) >= 2 and set(a) == set(b):
        return paired([a[s] - b[s] for s in sorted(a)])
    here, there = summarize(list(a.values())), summarize(list(b.values()))
    if here is None or there is None:
        return None
    return compare(here, there)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p values, in the order given: with the m values sorted,
    ``p'_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where ``p' < ALPHA`` keeps the
    probability of any false rejection among the m at most ALPHA."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _at_seeds(d: Delta, seeds: int) -> Delta:
    """``d`` as the same test would give it with ``seeds`` per side and the same spread."""
    if d.test == PAIRED:
        (var,) = d.spread
        return _tested(d.delta, math.sqrt(var / seeds), seeds - 1)
    var_a, var_b = d.spread
    se = math.sqrt((var_a + var_b) / seeds)
    return _tested(d.delta, se, welch_df(var_a, seeds, var_b, seeds))


def seeds_to_resolve(d: Delta, alpha: float = ALPHA) -> int | None:
    """The fewest seeds per side (at least 2) at which Δ, with the per-seed spread measured,
    would be significant at ``alpha``: SE shrinks as 1/sqrt(n) and the df grows (paired n - 1,
    Welch its Satterthwaite df at n per side). None for a zero difference or no spread;
    MAX_SEEDS_NEEDED + 1 (read: more than MAX_SEEDS_NEEDED) when even that many would not do."""
    if d.delta == 0 or d.test is None:
        return None

    def rejects(seeds: int) -> bool:
        p = _at_seeds(d, seeds).p
        return p is not None and p < alpha

    if not rejects(MAX_SEEDS_NEEDED):
        return MAX_SEEDS_NEEDED + 1
    low, high = 1, MAX_SEEDS_NEEDED  # low never rejects (no spread), high does: bisect
    while high - low > 1:
        mid = (low + high) // 2
        if rejects(mid):
            high = mid
        else:
            low = mid
    return high

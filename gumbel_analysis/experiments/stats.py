"""The statistics of results over seeds, in one place: ``gumbel table`` and ``gumbel reproduce``
both call these.

* :func:`summarize`: mean and sample standard deviation (ddof = 1) of the finite values.
* :func:`compare`: a difference of two means and its Welch standard error
  ``SE = sqrt(s^2/n + s_0^2/n_0)``; :func:`difference` pairs the runs instead when both sides ran
  the same two or more seeds (SE of the mean per-seed difference).
* :func:`beyond_spread`: the test a difference must pass to stand out of the seed-to-seed
  spread, ``margin > SPREAD_FACTOR * SE``; :func:`exceeds` and :func:`seeds_to_resolve` are
  stated with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: A difference exceeds the spread when |delta| > SPREAD_FACTOR * SE.
SPREAD_FACTOR = 2.0
#: Above this many seeds, "seeds needed" is reported as "more than".
MAX_SEEDS_NEEDED = 1000


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
    """The difference of a row's mean to the baseline's and whether it exceeds the spread."""

    delta: float
    se: float | None
    exceeds: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "se": self.se, "exceeds": self.exceeds}


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


def beyond_spread(margin: float, se: float) -> bool:
    """Whether ``margin`` (a difference, signed the way it is asked about) stands out of the
    seed-to-seed spread: ``margin > SPREAD_FACTOR * se``."""
    return margin > SPREAD_FACTOR * se


def exceeds(delta: float, se: float | None) -> bool | None:
    """``|delta| > SPREAD_FACTOR * se``; None when SE is unknown (a side with one run)."""
    return None if se is None else beyond_spread(abs(delta), se)


def compare(row: Stat, base: Stat) -> Delta:
    """delta = mean - mean_0, SE = sqrt(s^2/n + s_0^2/n_0) (Welch), and whether it exceeds."""
    delta = row.mean - base.mean
    if row.std is None or base.std is None:
        return Delta(delta, None, None)
    se = math.sqrt(row.std**2 / row.n + base.std**2 / base.n)
    return Delta(delta, se, exceeds(delta, se))


def difference(a: Mapping[int, float], b: Mapping[int, float]) -> Delta | None:
    """Δ of the values of ``a`` over those of ``b`` (per seed): paired when both sides have the
    same two or more seeds (a pair shares its data order, augmentation and backbone
    initialisation; SE of the mean per-seed difference), else :func:`compare` of the two means.
    None when a side has no value."""
    if len(a) >= 2 and set(a) == set(b):
        stat = summarize([a[s] - b[s] for s in sorted(a)])
        assert stat is not None and stat.std is not None
        se = stat.std / math.sqrt(stat.n)
        return Delta(stat.mean, se, exceeds(stat.mean, se))
    here, there = summarize(list(a.values())), summarize(list(b.values()))
    if here is None or there is None:
        return None
    return compare(here, there)


def seeds_to_resolve(delta: float, se: float, seeds: int) -> int | None:
    """Seeds per side at which a difference of ``|delta|`` would pass :func:`beyond_spread`, if
    the per-seed spread stays as measured with ``seeds`` seeds.

    SE shrinks as 1/sqrt(seeds) (paired or Welch, with equal seeds per side), so the smallest
    n' with ``|delta| > SPREAD_FACTOR * se * sqrt(seeds / n')`` is
    ``floor(seeds * (SPREAD_FACTOR * se / |delta|)^2) + 1``. None for a zero difference, and
    above MAX_SEEDS_NEEDED, MAX_SEEDS_NEEDED + 1 (read: more than MAX_SEEDS_NEEDED).
    """
    if delta == 0 or seeds < 1:
        return None
    ratio = seeds * (SPREAD_FACTOR * se / abs(delta)) ** 2
    if ratio >= MAX_SEEDS_NEEDED:
        return MAX_SEEDS_NEEDED + 1

    def resolves(count: int) -> bool:
        return beyond_spread(abs(delta), se * math.sqrt(seeds / count))

    # floor(ratio) - 1 cannot resolve even with rounding; step up from floor(ratio), which
    # decides an exact boundary (ratio an integer) the way the criterion is evaluated
    needed = max(1, math.floor(ratio))
    while not resolves(needed):
        needed += 1
    return needed

"""The verdicts on the paper's claims that the items of the material make.

Every claim ("Gumbel > Sigmoid on APr") is judged on the runs' per-seed values with Student's t
test of ``experiments/stats.py``: paired over seeds when both sides ran the same seeds (a pair
shares its data order, augmentation and backbone initialisation; df = n - 1), else Welch's test
with its Welch-Satterthwaite df; two-sided, at the 5% level.

* "A > B" *holds* when the test rejects and Δ is in the paper's direction, is *contradicted*
  when it rejects the other way, and is *not established* otherwise, whatever the sign of Δ;
  with one seed per side there is no spread, so nothing is established (run with ``--seeds 3``).
* "A is the best of B, C, ..." is an intersection of comparisons: it holds when every one
  rejects in the paper's direction, so its p is the largest of theirs (the intersection-union
  test, at level 5% as it stands). It is contradicted when any rival beats A significantly; that
  p is the smallest of the rivals' p times the number of comparisons (Bonferroni within the
  claim).
* A report judges all its claims at once: :func:`adjust` replaces each claim's p by its
  Holm-Bonferroni adjusted p over the claims of the report, which keeps the chance of any false
  verdict among them at most 5%, and only an adjusted p < 0.05 gives a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.material import Claim
from gumbel_analysis.experiments.measure import Measured
from gumbel_analysis.experiments.stats import (
    ALPHA,
    MAX_SEEDS_NEEDED,
    PAIRED,
    Delta,
    holm,
    seeds_to_resolve,
)

HOLDS, CONTRADICTED, NOT_ESTABLISHED, NO_RESULT = (
    "holds",
    "contradicted",
    "not established",
    "no result",
)
ONE_SEED = "one seed: no spread"
WITHIN = "within the seed spread"


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    delta: float | None = None  # better - worse, of the comparison that decides the verdict
    se: float | None = None
    against: str | None = None  # the configuration of that comparison
    n: tuple[int, int] = (0, 0)
    detail: str = ""
    test: Delta | None = None  # that comparison's t test
    p: float | None = None  # the claim's p (see the module docstring)
    p_adjusted: float | None = None  # after Holm over the report's claims (= p for one claim)
    family: int = 1  # how many claims the adjustment was over
    tests: tuple[tuple[str, Delta], ...] = ()  # every comparison the claim makes

    @property
    def seeds_needed(self) -> int | None:
        """Not established with a spread: the seeds per side at which the same differences and
        spread would give the verdict, at the level the claim is held to (5%, or what Holm's
        adjustment leaves it: 5% * p / adjusted p); for "best of" every comparison must pass."""
        if self.verdict != NOT_ESTABLISHED or self.p is None or self.p_adjusted is None:
            return None
        alpha = ALPHA * (self.p / self.p_adjusted if self.p_adjusted > 0 else 1.0)
        if _direction(self) == CONTRADICTED:
            assert self.test is not None
            return seeds_to_resolve(self.test, alpha * self.test.p / self.p if self.p else alpha)
        needed = [seeds_to_resolve(d, alpha) for _, d in self.tests]
        return None if None in needed else max(needed)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        test = self.test
        return {
            "claim": self.claim.text,
            "metric": self.claim.metric,
            "paper": self.claim.paper,
            "verdict": self.verdict,
            "delta": self.delta,
            "se": self.se,
            "t": test.t if test else None,
            "df": test.df if test else None,
            "test": test.test if test else None,
            "p": self.p,
            "p_holm": self.p_adjusted,
            "claims_adjusted_over": self.family if self.p is not None else None,
            "against": self.against,
            "n": list(self.n),
            "detail": self.detail or None,
            "seeds_needed": self.seeds_needed,
            "text": verdict_text(self),
        }


def judge(claim: Claim, measured: Measured, schedule: str) -> Verdict:
    """The claim's verdict on the per-seed values, as a family of one claim (see the module
    docstring; :func:`adjust` judges it among the others of a report)."""
    sign = -1.0 if claim.lower_is_better else 1.0
    tests: list[tuple[str, Delta]] = []
    for other in claim.worse:
        d = measured.difference(claim.better, other, schedule, claim.metric)
        if d is None:
            has_best = bool(measured.by_seed(claim.better, schedule, claim.metric))
            missing = other if has_best else claim.better
            return Verdict(claim, NO_RESULT, detail=f"no finished run of {missing}")
        tests.append((other, d))
    if any(d.p is None for _, d in tests):
        other, d = min(tests, key=lambda od: sign * od[1].delta)
        return Verdict(claim, NOT_ESTABLISHED, d.delta, None, other, d.n, ONE_SEED, d)
    rivals = [(o, d) for o, d in tests if sign * d.delta < 0]
    if rivals:  # contradicted if any of them beats the claim's configuration
        other, d = min(rivals, key=lambda od: od[1].p)
        p = min(1.0, len(tests) * d.p)
    else:  # holds only if every comparison does
        other, d = max(tests, key=lambda od: od[1].p)
        p = d.p
    v = Verdict(claim, HOLDS, d.delta, d.se, other, d.n, "", d, p, p, 1, tuple(tests))
    return _decide(v)


def _decide(v: Verdict) -> Verdict:
    """The verdict at the claim's adjusted p: holds or contradicted (by the sign of its
    deciding difference) when it is below ALPHA, else not established."""
    assert v.p is not None and v.p_adjusted is not None
    if v.p_adjusted < ALPHA:
        return replace(v, verdict=_direction(v), detail="")
    if v.family > 1 and v.p < ALPHA:
        detail = f"{WITHIN} after Holm's adjustment over {v.family} claims"
    else:
        detail = WITHIN
    return replace(v, verdict=NOT_ESTABLISHED, detail=detail)


def _direction(v: Verdict) -> str:
    sign = -1.0 if v.claim.lower_is_better else 1.0
    return CONTRADICTED if v.delta is not None and sign * v.delta < 0 else HOLDS


def adjust(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts of one report with Holm's adjustment over every claim that has a p (the
    claims without a result or with one seed are not tested and do not count)."""
    tested = [i for i, v in enumerate(verdicts) if v.p is not None]
    adjusted = holm([verdicts[i].p for i in tested])
    out = list(verdicts)
    for i, p_adj in zip(tested, adjusted, strict=True):
        out[i] = _decide(replace(verdicts[i], p_adjusted=p_adj, family=len(tested)))
    return out


def format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(name: str, p: float) -> str:
    """``p = 0.029`` or ``p < 0.001``."""
    text = format_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def test_text(d: Delta) -> str:
    """``paired t(2) = 6.10`` / ``Welch t(3.7) = 2.40`` (``t = ∞`` for a zero spread)."""
    df = f"{d.df:g}" if d.test == PAIRED else f"{d.df:.1f}"
    t = "∞" if d.t is None else f"{d.t:.2f}"
    return f"{'paired' if d.test == PAIRED else 'Welch'} t({df}) = {t}"


def verdict_text(v: Verdict, digits: int = 1) -> str:
    """``holds: ΔAPr = +3.2 ± 1.1 (SE), paired t(2) = 2.91, p = 0.010, Holm p = 0.040; 3 and 3
    seeds`` and the like (the claim's quantity, unit and digits where it names them)."""
    if v.verdict == NO_RESULT:
        return f"no result ({v.detail})"
    claim = v.claim
    name, unit = claim.quantity or claim.metric, claim.unit
    digits = digits if claim.digits is None else claim.digits
    label = material.config_label(v.against or "") if v.against else v.against
    against = f" vs {label}" if len(claim.worse) > 1 else ""
    text = f"{v.verdict}: Δ{name}{against} = {v.delta:+.{digits}f}{unit}"
    if v.detail == ONE_SEED:
        return text + " (one seed: no spread; use --seeds 3)"
    assert v.test is not None and v.p is not None and v.p_adjusted is not None
    text += f" ± {v.se:.{digits}f} (SE), {test_text(v.test)}, {p_phrase('p', v.p)}"
    if v.family > 1:
        text += f", {p_phrase('Holm p', v.p_adjusted)}"
    text += f"; {v.n[0]} and {v.n[1]} seeds"
    text += f"; {v.detail}" if v.detail else ""
    if v.seeds_needed is not None:
        more = "more than " if v.seeds_needed > MAX_SEEDS_NEEDED else "about "
        count = min(v.seeds_needed, MAX_SEEDS_NEEDED)
        text += f" (a difference this size needs {more}{count} seeds per side at 5%)"
    return text

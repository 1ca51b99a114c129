"""The verdicts on the paper's claims that the items of the material make.

Every claim ("Gumbel > Sigmoid on APr") is judged on the runs' per-seed values: Δ = mean −
mean₀, and its standard error SE is that of the mean of the per-seed differences when both sides
ran the same seeds (paired: a pair shares its data order, augmentation and backbone
initialisation), else sqrt(s²/n + s₀²/n₀) (Welch); see ``experiments/stats.py``. It *holds* when
Δ is beyond the spread (Δ > 2·SE) in the paper's direction, is *contradicted* when it is so in
the other, and is *not established* otherwise, whatever the sign of Δ; with one seed per side
there is no spread, so nothing is established (run with ``--seeds 3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.material import Claim
from gumbel_analysis.experiments.measure import Measured
from gumbel_analysis.experiments.stats import MAX_SEEDS_NEEDED, beyond_spread, seeds_to_resolve

HOLDS, CONTRADICTED, NOT_ESTABLISHED, NO_RESULT = (
    "holds",
    "contradicted",
    "not established",
    "no result",
)


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    delta: float | None = None  # better - worse, at the closest margin
    se: float | None = None
    against: str | None = None  # the configuration of that margin
    n: tuple[int, int] = (0, 0)
    detail: str = ""

    @property
    def seeds_needed(self) -> int | None:
        """Not established with a spread: the seeds per side that would resolve ``delta``."""
        if self.verdict != NOT_ESTABLISHED or self.delta is None or self.se is None:
            return None
        return seeds_to_resolve(self.delta, self.se, min(self.n))

    def as_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim.text,
            "metric": self.claim.metric,
            "paper": self.claim.paper,
            "verdict": self.verdict,
            "delta": self.delta,
            "se": self.se,
            "against": self.against,
            "n": list(self.n),
            "detail": self.detail or None,
            "seeds_needed": self.seeds_needed,
            "text": verdict_text(self),
        }


def judge(claim: Claim, measured: Measured, schedule: str) -> Verdict:
    """The claim's verdict on the per-seed values (see the module docstring)."""
    sign = -1.0 if claim.lower_is_better else 1.0
    best = measured.stat(claim.better, schedule, claim.metric)
    margins = []  # (margin in the claim's direction, delta, se, other, n)
    for other in claim.worse:
        base = measured.stat(other, schedule, claim.metric)
        if best is None or base is None:
            missing = claim.better if best is None else other
            return Verdict(claim, NO_RESULT, detail=f"no finished run of {missing}")
        d = measured.difference(claim.better, other, schedule, claim.metric)
        assert d is not None  # both sides have values
        margins.append((sign * d.delta, d.delta, d.se, other, (best.n, base.n)))
    closest = min(margins, key=lambda m: m[0])
    _, delta, se, other, n = closest
    if any(m[2] is None for m in margins):
        return Verdict(claim, NOT_ESTABLISHED, delta, None, other, n, "one seed: no spread")
    against = [m for m in margins if beyond_spread(-m[0], m[2])]
    if against:
        worst = min(against, key=lambda m: m[0] / m[2] if m[2] else m[0])
        return Verdict(claim, CONTRADICTED, worst[1], worst[2], worst[3], worst[4])
    if all(beyond_spread(m[0], m[2]) for m in margins):
        return Verdict(claim, HOLDS, delta, se, other, n)
    return Verdict(claim, NOT_ESTABLISHED, delta, se, other, n, "within the seed spread")


def verdict_text(v: Verdict, digits: int = 1) -> str:
    """``holds: ΔAPr = +3.2 ± 1.1 (SE), 3 and 3 seeds`` and the like (the claim's quantity,
    unit and digits where it names them)."""
    if v.verdict == NO_RESULT:
        return f"no result ({v.detail})"
    claim = v.claim
    name, unit = claim.quantity or claim.metric, claim.unit
    digits = digits if claim.digits is None else claim.digits
    label = material.config_label(v.against or "") if v.against else v.against
    against = f" vs {label}" if len(claim.worse) > 1 else ""
    text = f"{v.verdict}: Δ{name}{against} = {v.delta:+.{digits}f}{unit}"
    if v.se is not None:
        text += f" ± {v.se:.{digits}f} (SE), {v.n[0]} and {v.n[1]} seeds"
    if v.detail == "one seed: no spread":
        return text + " (one seed: no spread; use --seeds 3)"
    text += f"; {v.detail}" if v.detail else ""
    if v.seeds_needed is not None:
        more = "more than " if v.seeds_needed > MAX_SEEDS_NEEDED else "about "
        count = min(v.seeds_needed, MAX_SEEDS_NEEDED)
        text += f" (a difference this size needs {more}{count} seeds per side)"
    return text

"""The statistics behind every verdict and every ``*``: Student's t (paired and Welch) against
scipy, Holm-Bonferroni against its definition, and the report's family of claims."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gumbel_analysis.experiments.claims import (
    CONTRADICTED,
    HOLDS,
    NOT_ESTABLISHED,
    adjust,
    judge,
    verdict_text,
)
from gumbel_analysis.experiments.material import Claim
from gumbel_analysis.experiments.measure import Measured
from gumbel_analysis.experiments.stats import (
    ALPHA,
    compare,
    difference,
    holm,
    paired,
    summarize,
    welch_df,
)


def measured(values: dict[str, list[float]], metric: str = "AP") -> Measured:
    """Every configuration's values on seeds 0, 1, ... (paired)."""
    return Measured(values={(n, "1x", metric): dict(enumerate(v)) for n, v in values.items()})


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_t_matches_scipy(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(30, 2, n), rng.normal(29, 2, n)
    d = difference(dict(enumerate(a)), dict(enumerate(b)))
    ref = scipy_stats.ttest_rel(a, b)
    assert d.test == "paired" and d.df == n - 1 and d.n == (n, n)
    assert d.t == pytest.approx(ref.statistic, rel=1e-10)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert d.exceeds == (ref.pvalue < 0.05)


@pytest.mark.parametrize(("n_a", "n_b"), [(2, 2), (3, 3), (2, 5), (4, 3)])
def test_welch_t_and_its_df_match_scipy(n_a, n_b):
    rng = np.random.default_rng(10 * n_a + n_b)
    a, b = rng.normal(30, 3, n_a), rng.normal(28, 1, n_b)
    # different seeds on the two sides: not paired
    d = difference(dict(enumerate(a)), {100 + i: x for i, x in enumerate(b)})
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert d.test == "welch"
    assert d.t == pytest.approx(ref.statistic, rel=1e-10)
    assert d.df == pytest.approx(ref.df, rel=1e-10)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-10)
    # the Welch-Satterthwaite formula itself, written out
    va, vb = a.var(ddof=1) / n_a, b.var(ddof=1) / n_b
    expected = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    assert welch_df(a.var(ddof=1), n_a, b.var(ddof=1), n_b) == pytest.approx(expected)


def test_a_case_twice_the_se_passes_and_the_t_test_does_not():
    """Welch with 3 seeds per side: |Δ| = 2.3 SE, beyond 2 SE, but df = 4 (97.5% quantile
    2.78): p = 0.083, not significant."""
    a, b = [10.0, 12.0, 14.0], [8.0, 10.0, 12.0]
    shift = 2.3 * math.sqrt(4 / 3 + 4 / 3) - 2.0
    a = [x + shift for x in a]
    d = compare(summarize(a), summarize(b))
    assert abs(d.delta) > 2 * d.se and d.df == pytest.approx(4.0)
    assert d.p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert 0.05 < d.p < 0.1 and d.exceeds is False


def test_no_spread_means_no_test_and_zero_spread_an_exact_one():
    one = compare(summarize([5.0]), summarize([1.0, 2.0]))
    assert one.se is None and one.p is None and one.exceeds is None and one.t is None
    same = paired([2.0, 2.0, 2.0])  # every seed +2: t infinite, significant
    assert same.se == 0.0 and same.t is None and same.p == 0.0 and same.exceeds is True
    assert paired([0.0, 0.0]).p == 1.0
    numbers = [v for v in same.as_dict().values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)  # JSON never holds inf or NaN


def holm_by_definition(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p: for the i-th smallest, the max over j <= i of (m-j+1) p_(j)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = min(1.0, max((m - j) * ps[order[j]] for j in range(rank + 1)))
    return out


@pytest.mark.parametrize(
    "ps", [[0.01, 0.04, 0.03, 0.005], [0.2], [0.5, 0.001, 0.02], [0.03, 0.03, 0.9, 0.01]]
)
def test_holm_matches_its_definition_and_a_hand_computed_case(ps):
    assert holm(ps) == pytest.approx(holm_by_definition(ps))
    # reject where adjusted p < ALPHA <=> Holm's step-down procedure rejects it
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    rejected = set()
    for rank, i in enumerate(order):
        if ps[i] >= ALPHA / (len(ps) - rank):
            break
        rejected.add(i)
    assert {i for i, p in enumerate(holm(ps)) if p < ALPHA} == rejected


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, max(0.03, 2*0.03), max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_a_report_adjusts_its_claims_together():
    """A claim with p = 0.02 holds alone; among five claims with larger p values Holm multiplies
    it by 5 and it is no longer established, and the text says so, with both p."""
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    strong = [[30.0, 31.0, 33.0], [28.0, 29.5, 30.0]]  # paired Δ = 2, 1.5, 3
    alone = judge(claim, measured({"a": strong[0], "b": strong[1]}), "1x")
    assert alone.verdict == HOLDS and alone.p < 0.05
    weak = judge(claim, measured({"a": [1.0, 2.0, 3.0], "b": [1.5, 1.0, 3.2]}), "1x")
    verdicts = adjust([alone, weak, weak, weak, weak])
    first = verdicts[0]
    assert first.p == alone.p and first.p_adjusted == pytest.approx(min(1.0, 5 * alone.p))
    assert first.verdict == NOT_ESTABLISHED and first.family == 5
    text = verdict_text(first)
    assert "Holm p = " in text and "after Holm's adjustment over 5 claims" in text
    assert first.as_dict()["p_holm"] == first.p_adjusted
    # its seeds needed are asked at the level Holm leaves it (5% / 5): more than 3
    assert first.seeds_needed is not None and first.seeds_needed > 3


def test_best_of_several_is_an_intersection_union_test():
    """GOL best of three: holds when all three comparisons reject; its p is the largest."""
    claim = Claim("a is best", "AP", "a", ("b", "c", "d"), "best")
    values = {
        "a": [40.0, 41.0, 43.0],
        "b": [30.0, 30.5, 33.5],
        "c": [35.0, 36.5, 37.0],
        "d": [38.0, 38.2, 41.5],
    }
    v = judge(claim, measured(values), "1x")
    ps = {o: scipy_stats.ttest_rel(values["a"], values[o]).pvalue for o in "bcd"}
    assert v.p == pytest.approx(max(ps.values())) and v.against == max(ps, key=ps.get)
    assert v.verdict == (HOLDS if max(ps.values()) < 0.05 else NOT_ESTABLISHED)


def test_a_rival_contradicts_with_bonferroni_within_the_claim():
    claim = Claim("a is best", "AP", "a", ("b", "c"), "best")
    values = {"a": [10.0, 11.0, 12.0], "b": [1.0, 2.0, 3.5], "c": [20.0, 21.5, 22.0]}
    v = judge(claim, measured(values), "1x")
    p_c = scipy_stats.ttest_rel(values["a"], values["c"]).pvalue
    assert v.against == "c" and v.p == pytest.approx(min(1.0, 2 * p_c))
    assert v.verdict == (CONTRADICTED if 2 * p_c < 0.05 else NOT_ESTABLISHED)


def test_every_claim_of_a_family_is_judged_once_in_its_place():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    one_seed = judge(claim, measured({"a": [3.0], "b": [1.0]}), "1x")
    tested = [
        judge(claim, measured({"a": [x + 1, x + 2.5, x + 2], "b": [x, x, x]}), "1x")
        for x in (1.0, 5.0)
    ]
    out = adjust([tested[0], one_seed, tested[1]])
    assert out[1] is one_seed  # not tested: not counted, not changed
    assert [v.family for v in (out[0], out[2])] == [2, 2]
    assert sorted(v.p_adjusted for v in (out[0], out[2])) == pytest.approx(
        holm([tested[0].p, tested[1].p])
    )


def test_a_tiny_p_reads_p_below_a_thousandth():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    v = judge(claim, measured({"a": [10.0, 10.1, 10.2], "b": [1.0, 1.1, 1.25]}), "1x")
    text = verdict_text(v)
    assert v.p < 0.001 and "p < 0.001" in text and "= <" not in text

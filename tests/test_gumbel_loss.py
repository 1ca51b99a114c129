"""Gumbel BCE (Eq. 3, 4) in its three modes against independent float64 computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gumbel_analysis.losses import gumbel_bce
from gumbel_analysis.losses.gumbel import negative_terms


def reference_elementwise(q: torch.Tensor, target: torch.Tensor, sigma: float, low: float | None):
    """Float64 Gumbel BCE per element, written from the definitions (autograd gives the gradient).

    positive: -log eta = exp(-z) (continued along its tangent below ``low`` when given);
    negative: -log(1 - exp(-exp(-z))) with the standard log1mexp switch at ln 2.
    """
    q = q.double()
    z = q / sigma
    a = torch.exp(-z)
    pos = a
    if low is not None:
        z_low = low / sigma
        pos = torch.where(z < z_low, math.exp(-z_low) * (1 + z_low - z), a)
    # Each branch sees only inputs of its own domain, so the unused one stays finite and
    # autograd through torch.where does not turn 0 * inf into NaN.
    a_small = a.clamp(min=1e-300, max=math.log(2))
    a_large = a.clamp(min=math.log(2))
    neg = torch.where(
        a <= math.log(2),
        -torch.log(-torch.expm1(-a_small)),
        -torch.log1p(-torch.exp(-a_large)),
    )
    neg = torch.where(a < 1e-300, z, neg)  # a underflows only for z > 690: -log(1-e^-a) ~ z
    return torch.where(target > 0, pos, neg)


def reference_loss(logits, labels, sigma=1.0, low=None, weight=None, with_background=True):
    n, k = logits.shape
    width = k if with_background else k + 1
    target = F.one_hot(labels, width)[:, :k].double()
    elem = reference_elementwise(logits, target, sigma, low)
    if weight is not None:
        elem = elem * weight.double()
    return elem.sum() / max(n, 1)


def random_batch(seed, n, k, scale, with_background=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    num_labels = k if with_background else k + 1
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return logits, labels


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 40),
    k=st.integers(2, 30),
    scale=st.floats(0.1, 30.0),
    sigma=st.floats(0.5, 2.0),
    mode=st.sampled_from(["stable", "none"]),
    with_background=st.booleans(),
)
def test_float64_value_and_gradient_match_reference(
    seed, n, k, scale, sigma, mode, with_background
):
    logits, labels = random_batch(seed, n, k, scale, with_background)
    low = -4.0 if mode == "stable" else None
    x = logits.clone().requires_grad_()
    got = gumbel_bce(
        x, labels, temperature=sigma, mode=mode, low=-4.0, with_background=with_background
    )
    (got_grad,) = torch.autograd.grad(got, x)
    y = logits.clone().requires_grad_()
    ref = reference_loss(y, labels, sigma, low, with_background=with_background)
    (ref_grad,) = torch.autograd.grad(ref, y)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-300)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 64),
    k=st.integers(2, 40),
    scale=st.floats(0.1, 20.0),
    sigma=st.floats(0.6, 1.5),
)
def test_float32_is_accurate_to_float32_precision(seed, n, k, scale, sigma):
    logits, labels = random_batch(seed, n, k, scale, dtype=torch.float32)
    x = logits.clone().requires_grad_()
    got = gumbel_bce(x, labels, temperature=sigma)
    got.backward()
    # Reference at the same (float32-rounded) inputs, in float64.
    y = logits.double().requires_grad_()
    ref = reference_loss(y, labels, sigma, low=-4.0)
    ref.backward()
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=2e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=2e-5, atol=1e-9)


def test_negative_terms_elementwise_accuracy_over_the_float32_range():
    # Every float32 logit from -4.4 (below, the true terms are under 1e-36) to 1e4.
    q = torch.cat([torch.linspace(-4.4, 30.0, 20001), torch.logspace(1.5, 4, 200)])
    grad = torch.empty(q.numel())
    got_loss = torch.empty(q.numel(), dtype=torch.float64)
    for i in range(q.numel()):  # one element per call to read each term back
        total, g = negative_terms(q[i : i + 1, None], 1.0)
        got_loss[i], grad[i] = total, g[0, 0]
    qd = q.double().requires_grad_()
    ref = reference_elementwise(qd, torch.zeros_like(qd), 1.0, None)
    (ref_grad,) = torch.autograd.grad(ref.sum(), qd)
    rel_loss = ((got_loss - ref) / ref).abs().detach()
    rel_grad = ((grad.double() - ref_grad) / ref_grad).abs()
    # exp(-a) amplifies the half-ulp rounding of a float32 ``a = e^-z`` by ``a``: the bound
    # is a few ulps plus ``a`` ulps (a ~ 81 at z = -4.4, 1e-4 relative at worst).
    a = torch.exp(-q.double())
    bound = 1.2e-7 * (4.0 + a)
    assert (rel_loss <= bound).all(), float((rel_loss / bound).max())
    assert (rel_grad <= bound).all(), float((rel_grad / bound).max())
    assert rel_loss[q > 0].max() < 3e-7 and rel_grad[q > 0].max() < 3e-7


def test_gradcheck_all_modes_and_layouts():
    logits, labels = random_batch(1, 6, 5, 3.0)
    for mode in ("stable", "none", "paper"):
        for with_background in (True, False):
            x = logits.clone().clamp(-3.9, 9.9).requires_grad_()  # paper: away from its kinks
            weight = torch.rand(6, 5, dtype=torch.float64)
            assert torch.autograd.gradcheck(
                lambda t, m=mode, b=with_background, w=weight: gumbel_bce(
                    t, labels, mode=m, temperature=0.9, weight=w, with_background=b
                ),
                (x,),
            )


def test_gradcheck_in_the_linear_region_of_stable():
    x = torch.tensor([[-9.0, 2.0, -30.0], [-6.0, -20.0, 15.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])  # positives at -9 and 15; negatives at -30 and -20
    assert torch.autograd.gradcheck(
        lambda t: gumbel_bce(t, labels, temperature=1.3), (x.requires_grad_(),)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_stable_mode_is_finite_for_every_finite_logit(dtype, sigma):
    values = torch.linspace(-1e4, 1e4, 1204 * 16, dtype=torch.float64)
    extremes = torch.tensor([-1e4, 1e4, 0.0, -88.0, 88.0, -4.0, 10.0], dtype=torch.float64)
    logits = torch.cat([values, extremes.repeat(1204 // 7 * 7 + 7)[:1204]]).reshape(-1, 1204)
    labels = torch.randint(0, 1204, (logits.shape[0],))
    x = logits.to(dtype).requires_grad_()
    loss = gumbel_bce(x, labels, temperature=sigma)
    loss.backward()
    assert torch.isfinite(loss)
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all()


def test_stable_gradient_never_vanishes_where_the_model_is_wrong():
    x = torch.tensor([[-1e4, 1e4]], requires_grad=True)  # positive very low, negative very high
    gumbel_bce(x, torch.tensor([0]), temperature=1.0).backward()
    assert x.grad[0, 0] == pytest.approx(-math.exp(4.0), rel=1e-6)  # the tangent's slope at -4
    assert x.grad[0, 1] == pytest.approx(1.0, rel=1e-6)  # d(-log(1-eta))/dq -> 1/sigma


def test_stable_positive_term_is_c1_at_the_low_bound():
    sigma, low, eps = 1.2, -4.0, 1e-7
    pts = torch.tensor([[low - eps], [low], [low + eps]], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.long)
    values, grads = [], []
    for i in range(3):
        x = pts[i : i + 1].clone().requires_grad_()
        v = gumbel_bce(x, labels[:1], temperature=sigma, low=low)
        (g,) = torch.autograd.grad(v, x)
        values.append(float(v.detach()))
        grads.append(float(g))
    slope = -math.exp(-low / sigma) / sigma
    assert grads[0] == pytest.approx(slope, rel=1e-12)
    assert grads[2] == pytest.approx(slope, rel=1e-5)
    assert values[0] == pytest.approx(values[1] - slope * eps, rel=1e-12)
    assert values[2] == pytest.approx(values[1] + slope * eps, rel=1e-9)


def test_stable_keeps_the_loss_of_confident_negatives_that_paper_clips():
    x = torch.tensor([[1.0, 20.0]], requires_grad=True)
    labels = torch.tensor([0])
    stable = gumbel_bce(x, labels)
    (g_stable,) = torch.autograd.grad(stable, x)
    paper = gumbel_bce(x, labels, mode="paper")
    (g_paper,) = torch.autograd.grad(paper, x)
    ref = reference_loss(x.detach(), labels, 1.0, -4.0)
    assert float(stable) == pytest.approx(float(ref), rel=1e-6)
    assert float(stable) > 20.0  # -log(1 - eta(20)) ~ 20
    assert float(paper) < 10.5  # the clip at 10 caps it near 10
    assert g_paper[0, 1] == 0.0 and g_stable[0, 1] == pytest.approx(1.0, rel=1e-6)


def reference_recipe(logits, labels, low=-4.0, high=10.0):
    """The released code's recipe, written out: clamp, exp(-exp(-z)), BCE on probabilities,
    sum over classes / proposals, clamp of the reduced loss to [0, 20]."""
    p = torch.exp(-torch.exp(-torch.clamp(logits, min=low, max=high)))
    target = F.one_hot(labels, logits.shape[1]).float()
    loss = F.binary_cross_entropy(p, target, reduction="none").sum() / logits.shape[0]
    return torch.clamp(loss, min=0, max=20)


def test_paper_mode_equals_the_reference_recipe():
    logits, labels = random_batch(3, 64, 21, 4.0, dtype=torch.float32)
    x = logits.clone().requires_grad_()
    y = logits.clone().requires_grad_()
    got = gumbel_bce(x, labels, mode="paper")
    ref = reference_recipe(y, labels)
    got.backward()
    ref.backward()
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    torch.testing.assert_close(x.grad, y.grad)
    # Outside [-4, 10] the clamp passes no gradient.
    outside = (logits < -4) | (logits > 10)
    assert outside.any() and (x.grad[outside] == 0).all()


def test_paper_mode_value_is_the_analytic_loss_at_clamped_logits():
    logits, labels = random_batch(4, 16, 7, 5.0)
    got = gumbel_bce(logits, labels, mode="paper")
    ref = reference_loss(logits.clamp(-4, 10), labels, 1.0, None)
    assert float(got) == pytest.approx(min(float(ref), 20.0), rel=1e-12)


def test_paper_mode_clamps_the_reduced_loss_at_20_with_zero_gradient():
    x = torch.full((2, 50), 10.0, requires_grad=True)  # 49 confident wrong negatives per row
    loss = gumbel_bce(x, torch.tensor([0, 1]), mode="paper")
    loss.backward()
    assert float(loss) == 20.0
    assert (x.grad == 0).all()


def test_paper_recipe_silences_wrong_positives_below_z_minus_3_3():
    # binary_cross_entropy's backward divides by max(p(1-p), 1e-12): the documented quirk.
    x = torch.tensor([[-3.9, 0.0]], requires_grad=True)
    gumbel_bce(x, torch.tensor([0]), mode="paper").backward()
    exact = -math.exp(3.9)
    assert abs(float(x.grad[0, 0])) < 1e-3 * abs(exact)
    y = torch.tensor([[-3.9, 0.0]], requires_grad=True)
    gumbel_bce(y, torch.tensor([0])).backward()
    assert float(y.grad[0, 0]) == pytest.approx(exact, rel=1e-5)


def test_c_column_layout_gives_background_rows_all_zero_targets():
    logits, _ = random_batch(5, 8, 6, 3.0)
    labels = torch.tensor([6, 6, 0, 5, 6, 2, 6, 6])  # 6 = background, no background column
    got = gumbel_bce(logits, labels, with_background=False)
    ref = reference_loss(logits, labels, 1.0, -4.0, with_background=False)
    assert float(got) == pytest.approx(float(ref), rel=1e-12)
    all_bg = gumbel_bce(logits, torch.full((8,), 6), with_background=False)
    ref_bg = reference_elementwise(logits, torch.zeros_like(logits), 1.0, None).sum() / 8
    assert float(all_bg) == pytest.approx(float(ref_bg), rel=1e-12)


def test_half_precision_is_computed_in_float32():
    logits, labels = random_batch(6, 32, 11, 6.0, dtype=torch.float16)
    got = gumbel_bce(logits, labels)
    ref = gumbel_bce(logits.float(), labels)
    assert got.dtype == torch.float32
    assert float(got) == float(ref)


def test_works_under_autocast_through_a_linear_layer():
    layer = torch.nn.Linear(16, 9)
    x = torch.randn(32, 16)
    labels = torch.randint(0, 9, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = gumbel_bce(logits, labels)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_empty_batch_gives_zero_and_no_nan():
    x = torch.zeros((0, 5), requires_grad=True)
    loss = gumbel_bce(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0 and x.grad.shape == (0, 5)


def test_large_batch_crosses_chunks_like_a_small_one():
    # 700 rows x 1204 spans several cache chunks; the result equals row-by-row sums.
    logits, labels = random_batch(7, 700, 1204, 3.0, dtype=torch.float32)
    whole = gumbel_bce(logits, labels)
    parts = sum(
        float(gumbel_bce(logits[i : i + 100], labels[i : i + 100])) for i in range(0, 700, 100)
    )
    assert float(whole) == pytest.approx(parts / 7, rel=1e-6)


def test_invalid_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        gumbel_bce(x, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="low < high"):
        gumbel_bce(x, torch.tensor([0, 1]), mode="paper", low=10.0, high=-4.0)
    with pytest.raises(ValueError, match="overflows"):
        gumbel_bce(x, torch.tensor([0, 1]), temperature=0.01)
    with pytest.raises(ValueError, match="labels"):
        gumbel_bce(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        gumbel_bce(x, torch.tensor([0, 1]), mode="clipped")


def test_numpy_reference_agrees_on_a_known_point():
    # One positive at q = 0 and one negative at q = 0, sigma = 1: loss = 1 - log(1 - e^-1).
    loss = gumbel_bce(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]))
    assert float(loss) == pytest.approx(1 - np.log1p(-np.exp(-1.0)), rel=1e-15)


def test_a_confident_positive_does_not_cancel_a_small_loss():
    # The positive's negative term (~40) must never enter the sum: adding and removing it
    # would leave only ~1e-11 relative precision of the ~1e-4 that remains.
    for q_neg in torch.linspace(-2.6, -1.6, 41, dtype=torch.float64).tolist():
        x = torch.tensor([[40.0, q_neg]], dtype=torch.float64)
        got = gumbel_bce(x, torch.tensor([0]))
        expected = math.exp(-40.0) - math.log1p(-math.exp(-math.exp(-q_neg)))
        assert float(got) == pytest.approx(expected, rel=1e-14, abs=0), q_neg

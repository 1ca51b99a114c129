"""Closed forms of Sec. 1.1-1.3 against independent high-precision (mpmath) computations."""

import math

import mpmath
import pytest
import torch

from gumbel_analysis.errors import InputError
from gumbel_analysis.math import (
    cutoff_error,
    eta,
    init_bias,
    initial_gradients,
    log1m_eta,
    log_eta,
    sigmoid_prior_bias,
)

mpmath.mp.dps = 50


def mp_log1m_eta(q: float, sigma: float) -> mpmath.mpf:
    a = mpmath.exp(-mpmath.mpf(q) / sigma)
    return mpmath.log(-mpmath.expm1(-a))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_activation_and_logs_match_mpmath_over_wide_range(sigma):
    q = torch.linspace(-40, 700, 2001, dtype=torch.float64)
    got_eta = eta(q, sigma)
    got_log = log_eta(q, sigma)
    got_log1m = log1m_eta(q, sigma)
    for i in range(0, q.numel(), 37):
        qi = float(q[i])
        a = mpmath.exp(-mpmath.mpf(qi) / sigma)
        assert float(got_log[i]) == pytest.approx(float(-a), rel=1e-13)
        assert float(got_eta[i]) == pytest.approx(float(mpmath.exp(-a)), rel=1e-12, abs=1e-300)
        assert float(got_log1m[i]) == pytest.approx(float(mp_log1m_eta(qi, sigma)), rel=1e-12)


def test_log1m_eta_float32_is_finite_and_linear_for_large_q():
    q = torch.tensor([50.0, 100.0, 1e3, 1e4], dtype=torch.float32)
    got = log1m_eta(q)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, -q, rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_classes", [2, 3, 10, 81, 1204, 100_000])
@pytest.mark.parametrize("sigma", [0.8, 1.0, 1.2])
def test_init_bias_zeroes_the_total_gradient_of_eq1(num_classes, sigma):
    b = init_bias(num_classes, sigma)
    # Independent: Eq. 1 at q = b in 50-digit arithmetic, per unit of 1/sigma.
    a = mpmath.exp(-mpmath.mpf(b) / sigma)
    total = -a + (num_classes - 1) * a / mpmath.expm1(a)
    assert abs(float(total)) < 1e-12 * float(a)
    assert float(eta(torch.tensor(b, dtype=torch.float64), sigma)) == pytest.approx(
        1 / num_classes, rel=1e-12
    )
    closed = initial_gradients(num_classes, sigma)
    assert closed["positive"] == pytest.approx(float(-a / sigma), rel=1e-12)
    assert abs(closed["total"]) < 1e-10 * abs(closed["positive"])


def test_lvis_bias_is_about_minus_two():
    # Sec. 1.1: 1203 classes + background, b = -log(log(1204)) ~ -2.
    assert init_bias(1204) == pytest.approx(-math.log(math.log(1204)), rel=1e-15)
    assert round(init_bias(1204)) == -2


def test_sigmoid_prior_bias_has_the_same_prior():
    for c in (2, 10, 1204):
        b = sigmoid_prior_bias(c)
        assert 1 / (1 + math.exp(-b)) == pytest.approx(1 / c, rel=1e-12)


def test_cutoff_error_matches_mpmath_and_section_1_3():
    got = cutoff_error(-4.0, 10.0, 1.0)
    top = -mpmath.expm1(-mpmath.exp(-10))
    bottom = mpmath.exp(-mpmath.exp(4))
    assert got["top_error"] == pytest.approx(float(top), rel=1e-12)
    assert got["bottom_error"] == pytest.approx(float(bottom), rel=1e-12)
    assert got["bottom_error_log10"] == pytest.approx(float(mpmath.log10(bottom)), rel=1e-12)
    # The magnitudes the paper and the issue quote: about 4.5e-5 and 1.9e-24.
    assert f"{got['top_error']:.1e}" == "4.5e-05"
    assert f"{got['bottom_error']:.1e}" == "1.9e-24"


def test_cutoff_error_log10_survives_float64_underflow():
    got = cutoff_error(-10.0, 10.0, 0.8)
    assert got["bottom_error"] == 0.0  # exp(-exp(12.5)) underflows float64
    assert got["bottom_error_log10"] == pytest.approx(-math.exp(12.5) / math.log(10), rel=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: init_bias(1), "integer >= 2"),
        (lambda: init_bias(0), "integer >= 2"),
        (lambda: init_bias(10, 0.0), "positive finite"),
        (lambda: init_bias(10, -1.0), "positive finite"),
        (lambda: init_bias(10, float("nan")), "positive finite"),
        (lambda: cutoff_error(10.0, -4.0), "low < high"),
        (lambda: cutoff_error(-4.0, float("inf")), "finite"),
    ],
)
def test_bad_parameters_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()

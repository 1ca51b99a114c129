"""The Gumbel activation and the closed forms derived from it (supplementary Sec. 1.1-1.3).

Everything here is elementwise tensor math or float arithmetic, with no knowledge of losses or
models. ``z = q / sigma`` is the tempered logit throughout, and ``a = exp(-z)``, so that

    eta(q; sigma)       = exp(-exp(-q / sigma)) = exp(-a)                      (Eq. 3)
    log eta             = -a
    log(1 - eta)        = log(-expm1(-a))   (accurate where eta is near 1)
                        = log1p(-exp(-a))   (accurate where eta is near 0)
"""

from __future__ import annotations

import math

import torch

from gumbel_analysis.errors import InputError

LN2 = math.log(2.0)


def eta(q: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gumbel activation ``exp(-exp(-q / sigma))`` (Eq. 3).

    Saturates cleanly: very negative ``q`` gives 0 (``exp(-inf)``), never NaN.
    """
    return torch.exp(-torch.exp(-q / sigma))


def log_eta(q: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``log eta(q; sigma) = -exp(-q / sigma)``; exact, ``-inf`` only where exp overflows."""
    return -torch.exp(-q / sigma)


def log1m_eta(q: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``log(1 - eta(q; sigma))`` without cancellation.

    With ``a = exp(-q / sigma)``, ``log(1 - exp(-a))`` is a log1mexp: ``log(-expm1(-a))`` for
    ``a <= ln 2`` and ``log1p(-exp(-a))`` above (Maechler's switch). For large ``q``, where ``a``
    underflows, the series ``log(1 - e^-a) = log a - a/2 + O(a^2)`` gives ``-z - a/2``, which keeps
    the result linear in ``q`` instead of ``-inf``.
    """
    z = q / sigma
    a = torch.exp(-z)
    small = -z - 0.5 * a  # a < 1e-4: the series' next term, a^2/24, is below 1e-9
    mid = torch.log(-torch.expm1(-a))
    large = torch.log1p(-torch.exp(-a))
    return torch.where(a < 1e-4, small, torch.where(a <= LN2, mid, large))


def init_bias(num_classes: int, temperature: float = 1.0) -> float:
    """Initial classifier bias ``b = -sigma * log(log C)`` (Eq. 2, with temperature).

    With weights near 0 every logit is ``q ~ b``, so ``exp(-b / sigma) = log C`` and
    ``eta(b) = 1 / C``; the summed gradient of Eq. 1 is then zero. ``C`` counts the background
    (LVIS v1: 1203 + 1 = 1204, ``b ~ -1.959``).
    """
    check_num_classes(num_classes)
    check_temperature(temperature)
    return -temperature * math.log(math.log(num_classes))


def sigmoid_prior_bias(num_classes: int) -> float:
    """The Sigmoid bias with the same prior ``sigmoid(b) = 1 / C``: ``b = -log(C - 1)``.

    It also zeroes the summed initial gradient, since ``sum_j (p_j - y_j) = C / C - 1 = 0``.
    """
    check_num_classes(num_classes)
    return -math.log(num_classes - 1)


def initial_gradients(num_classes: int, temperature: float = 1.0) -> dict[str, float]:
    """The per-proposal gradient terms of Eq. 1 at ``q = b`` (closed form, float64).

    Returns the positive gradient ``-exp(-b/s)/s``, one negative gradient
    ``(exp(-b/s)/s) / (exp(exp(-b/s)) - 1)`` and their total over one positive and ``C - 1``
    negatives.
    """
    b = init_bias(num_classes, temperature)
    a = math.exp(-b / temperature)
    positive = -a / temperature
    negative = (a / temperature) / math.expm1(a)
    return {
        "bias": b,
        "positive": positive,
        "negative": negative,
        "total": positive + (num_classes - 1) * negative,
    }


def cutoff_error(low: float, high: float, sigma: float = 1.0) -> dict[str, float]:
    """What clipping the logits to ``[low, high]`` throws away (Sec. 1.3).

    The top error is ``1 - eta(high)``: a confident positive is never scored above ``eta(high)``.
    The bottom error is ``eta(low)``: a confident negative is never scored below it. At
    ``[-4, 10]`` with ``sigma = 1`` these are about 4.5e-5 and 1.9e-24. The bottom error underflows
    float64 for wide ranges, so its log10 is returned as well.
    """
    check_temperature(sigma)
    check_clip_range(low, high)
    top = -math.expm1(-math.exp(-high / sigma))
    bottom_log = -math.exp(-low / sigma)  # natural log of eta(low)
    return {
        "sigma": sigma,
        "low": low,
        "high": high,
        "top_error": top,
        "top_error_log10": math.log10(top) if top > 0 else -high / sigma / math.log(10),
        "bottom_error": math.exp(bottom_log),
        "bottom_error_log10": bottom_log / math.log(10),
    }


# Validation shared by the losses, the commands and the closed forms above. They raise
# InputError (a ValueError), which the command line prints as one line on stderr.


def check_num_classes(num_classes: int) -> None:
    if int(num_classes) != num_classes or num_classes < 2:
        raise InputError(
            f"the number of classes (background included) must be an integer >= 2, "
            f"got {num_classes}"
        )


def check_temperature(sigma: float) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"the temperature sigma must be a positive finite number, got {sigma}")


def check_clip_range(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"the clip range must be finite, got [{low}, {high}]")
    if low >= high:
        raise InputError(f"the clip range must have low < high, got [{low}, {high}]")

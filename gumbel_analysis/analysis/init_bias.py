"""Sec. 1.1: the initial bias that zeroes the summed gradient, checked through a real layer."""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import build_loss
from gumbel_analysis.math import (
    check_num_classes,
    check_temperature,
    eta,
    init_bias,
    initial_gradients,
    sigmoid_prior_bias,
)

#: The largest check: C x (features + 3 x proposals) float64 values (2 GiB).
MAX_CHECK_ELEMENTS = 2**28


def _measure(loss_name: str, num_classes: int, proposals: int, features: int, seed: int, **opts):
    """Initialise a real ``nn.Linear`` as the loss prescribes, run a batch through loss and
    autograd, and return the measured gradient statistics w.r.t. the logits."""
    gen = torch.Generator().manual_seed(seed)
    prior_prob = opts.pop("prior_prob", None)
    loss = build_loss(loss_name, num_classes - 1, **opts)  # num_classes counts the background
    if prior_prob is not None:  # the Sigmoid counterpart starts from the same prior, 1 / C
        loss.sigmoid_prior = prior_prob
    layer = nn.Linear(features, loss.num_outputs, dtype=torch.float64)
    loss.init_classifier(layer)
    x = torch.randn(proposals, features, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (proposals,), generator=gen)
    logits = layer(x)
    logits.retain_grad()
    loss(logits, labels).backward()
    grad = logits.grad * proposals  # per proposal, as in Eq. 1 (the loss averages over proposals)
    positive = grad[torch.arange(proposals), labels]
    negative_mask = torch.ones_like(grad, dtype=torch.bool)
    negative_mask[torch.arange(proposals), labels] = False
    return {
        "bias": float(layer.bias.detach()[0]),
        "total_initial_gradient": float(layer.bias.grad.sum()),
        # The total over the summed magnitudes: 0 when the terms of Eq. 1 cancel, 1 when none do.
        "relative_total": float(grad.sum(1).mean() / grad.abs().sum(1).mean()),
        "per_proposal_total_mean": float(grad.sum(1).mean()),
        "positive_gradient": float(positive.mean()),
        "negative_gradient": float(grad[negative_mask].mean()),
        "max_abs_logit_offset": float((logits - layer.bias).detach().abs().max()),
    }


def init_bias_report(
    num_classes: int,
    temperature: float = 1.0,
    proposals: int = 512,
    features: int = 1024,
    seed: int = 0,
) -> dict:
    """The closed form of Eq. 2 (with temperature) and its check.

    ``num_classes`` counts the background (LVIS v1: 1204). The check runs a Gumbel layer
    (weights 0.001, bias from Eq. 2) on ``proposals`` random N(0, 1) feature vectors with random
    labels through the loss and autograd; the Sigmoid counterpart uses the bias with the same
    prior, ``sigmoid(b) = 1 / C``.
    """
    check_num_classes(num_classes)
    check_temperature(temperature)
    for name, value in (("--proposals", proposals), ("--features", features)):
        if value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value}")
    # The check holds [proposals, C] logits and a [C, features] layer in float64, with grads.
    elements = num_classes * (features + 3 * proposals)
    if elements > MAX_CHECK_ELEMENTS:
        raise InputError(
            f"--num-classes {num_classes} with --features {features} and --proposals "
            f"{proposals} needs {elements * 8 / 2**30:.3g} GiB for the check; at most "
            f"{MAX_CHECK_ELEMENTS * 8 / 2**30:.0f} GiB (C x (features + 3 x proposals) <= "
            f"{MAX_CHECK_ELEMENTS:.0e}): lower one of them"
        )
    b = init_bias(num_classes, temperature)
    if not math.isfinite(b):
        raise InputError(
            f"--temperature {temperature:g}: the bias b = -sigma*log(log C) = "
            f"-{temperature:g} x {math.log(math.log(num_classes)):.4g} overflows float64; "
            f"use a temperature below {sys.float_info.max / math.log(math.log(num_classes)):.3g}"
        )
    closed = initial_gradients(num_classes, temperature)
    try:
        measured = _measure(
            "gumbel", num_classes, proposals, features, seed, temperature=temperature
        )
    except (ValueError, OverflowError) as err:  # the loss refuses what overflows its float32
        raise InputError(
            f"--temperature {temperature:g} is too small for the check's Gumbel loss: {err}"
        ) from None
    if not all(math.isfinite(v) for v in measured.values()):
        bad = [k for k, v in measured.items() if not math.isfinite(v)]
        raise InputError(
            f"--temperature {temperature:g} with --num-classes {num_classes}: the check's "
            f"{', '.join(bad)} is not finite in float64"
        )
    sig_b = sigmoid_prior_bias(num_classes)
    sig_measured = _measure(
        "sigmoid", num_classes, proposals, features, seed, prior_prob=1.0 / num_classes
    )
    sig_p = 1.0 / num_classes
    return {
        "num_classes": num_classes,
        "temperature": temperature,
        "bias": b,
        "eta_at_bias": float(eta(torch.tensor(b, dtype=torch.float64), temperature)),
        "one_over_c": 1.0 / num_classes,
        "closed_form": closed,
        "total_initial_gradient": measured["total_initial_gradient"],
        "measured": measured,
        "sigmoid": {
            "bias": sig_b,
            "sigmoid_at_bias": 1.0 / (1.0 + math.exp(-sig_b)),
            "closed_form": {
                "positive": sig_p - 1.0,
                "negative": sig_p,
                "total": (sig_p - 1.0) + (num_classes - 1) * sig_p,
            },
            "measured": sig_measured,
        },
        "check": {"proposals": proposals, "features": features, "seed": seed},
    }

"""Gumbel binary cross-entropy (Eq. 3 activation, the loss of Eq. 4 with all weights 1).

For logits ``q`` of shape [N, K] and one label per proposal, with ``z = q / sigma``:

    L = (1/N) * sum_i sum_j w_ij * ( y_ij * a_ij  -  (1 - y_ij) * log(1 - exp(-a_ij)) ),
    a = exp(-z),   y_ij = 1 only at the proposal's label column.

Gradients (per element, before the 1/N):  positive ``-a / sigma``; negative
``(a / sigma) / (exp(a) - 1)``.

Three modes:

``stable`` (default)
    The exact loss everywhere, and below ``low`` (default -4) the positive term continues along
    its tangent (C1), so loss and gradient are finite for every finite logit and the gradient of
    a wrong positive never vanishes. The negative term needs no safeguard: it is evaluated in
    log space, where it grows linearly for confident wrong negatives, instead of being cut off.
``paper``
    The reference recipe: ``clamp(q, low, high)`` with the paper's [-4, 10], ``exp(-exp(-z))``,
    ``binary_cross_entropy`` on the probabilities, and the reduced loss clamped to [0, 20].
    Gradients are zero outside the clip range. Note that ``binary_cross_entropy``'s backward
    divides by ``max(p (1 - p), 1e-12)``, so a positive with ``p < 1e-12`` (``z < -3.3``) gets a
    nearly-zero gradient instead of ``-a``: the recipe, not just the clip, silences the most
    wrong positives.
``none``
    The exact formula, no safeguard: the positive term overflows to inf below ``z ~ -88``.

The ``stable`` and ``none`` modes run as one custom autograd function: the forward pass computes
loss and gradient together, in row chunks that fit in the CPU cache, and only with ``exp``/``log``
(vectorised) plus a short series; the backward pass is one multiplication. Positives are one per
row, so they are handled on the gathered [N] values, never on the full matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gumbel_analysis.math import LN2, check_clip_range, check_temperature
from gumbel_analysis.paper import PAPER_CLIP, PAPER_LOSS_CLAMP
from gumbel_analysis.spec.losses import GumbelMode

# Rows per chunk so one [rows, K] float32 buffer is about 1 MiB (seven of them stay in L2).
_CHUNK_ELEMENTS = 1 << 18


class _Limits:
    """Per-dtype constants of the negative-term kernel.

    ``t_min``/``t_max`` bound ``t = -z`` before ``exp`` so that ``a`` and ``exp(-a)`` stay normal
    numbers (denormals are slow and the true values there are below the type's resolution).
    ``series_max`` is the largest ``a`` evaluated by the series, whose first dropped term,
    ``a^10 / 479001600``, must be below the type's epsilon.
    """

    def __init__(self, dtype: torch.dtype):
        if dtype == torch.float64:
            self.t_min, self.t_max, self.series_max = -40.0, math.log(700.0), 0.05
        else:
            self.t_min, self.t_max, self.series_max = -40.0, math.log(86.0), LN2


def _negative_terms_chunk(
    q: torch.Tensor,
    inv_sigma: float,
    grad_scale: float,
    grad_out: torch.Tensor,
    weight: torch.Tensor | None,
    bufs: list[torch.Tensor],
    limits: _Limits,
    skip: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Write ``grad_scale * w * d(-log(1 - eta))/dq`` into ``grad_out``; return ``sum(w * loss)``
    over the chunk's entries except the (row, column) pairs in ``skip``.

    With ``a = exp(-z)``:
    * ``a > series_max``: ``r = exp(-a)``, ``u = 1 - r`` and ``-log1p(-r)`` as
      ``-log(u) + ((u - 1) + r) / u`` (the first-order correction of a rounded ``1 + x``);
      gradient ``a r / u``.
    * ``a <= series_max``: ``-log(1 - e^-a) = z + a/2 - a^2/24 + a^4/2880 - a^6/181440
      + a^8/9676800`` (log of ``(1 - e^-a)/a`` by Bernoulli numbers), gradient its derivative
      ``a / (e^a - 1) = 1 - a/2 + a^2/12 - a^4/720 + a^6/30240 - a^8/1209600``.
    Both branches are computed on clamped inputs (so both are finite) and selected with a 0/1 mask
    as ``x*m + (y - y*m)``, exact for ``m`` in {0, 1} (a blend ``y + m*(x - y)`` would cancel the
    tiny values of one branch against the other's); cheaper than ``torch.where`` on the CPU.
    """
    n = q.shape[0]
    t, a, r, x, y, w, m = (b[:n] for b in bufs)
    # Upcast first: half-precision q times -1/sigma would round z in half precision.
    t.copy_(q)
    t.mul_(-inv_sigma)  # t = -z
    torch.clamp(t, limits.t_min, limits.t_max, out=a)
    a.exp_()
    torch.gt(a, limits.series_max, out=m)
    # Branch 1: log1p form.
    torch.clamp(a, min=limits.series_max, out=r)
    r.neg_().exp_()
    torch.neg(r, out=y)
    y.add_(1.0)  # u
    torch.log(y, out=x)
    x.neg_()
    torch.sub(y, 1.0, out=w)
    w.add_(r).div_(y)
    x.add_(w)
    torch.mul(a, r, out=grad_out)
    grad_out.div_(y)
    # Branch 2: series in a (a^2 in w).
    torch.mul(a, a, out=w)
    torch.mul(w, 1.0 / 9676800.0, out=y)
    y.sub_(1.0 / 181440.0).mul_(w).add_(1.0 / 2880.0).mul_(w).sub_(1.0 / 24.0).mul_(w)
    y.add_(a, alpha=0.5).sub_(t)
    _select_(x, y, m, t)
    if weight is not None:
        x.mul_(weight)
    if skip is not None:
        # Left out of the sum rather than subtracted later: a confident positive's negative
        # term is ~z, and adding then removing it would cancel the batch's small losses.
        x[skip] = 0.0
    total = x.sum(dtype=torch.float64)
    torch.mul(w, -1.0 / 1209600.0, out=y)
    y.add_(1.0 / 30240.0).mul_(w).sub_(1.0 / 720.0).mul_(w).add_(1.0 / 12.0).mul_(w)
    y.add_(1.0).sub_(a, alpha=0.5)
    _select_(grad_out, y, m, t)
    grad_out.mul_(inv_sigma * grad_scale)
    if weight is not None:
        grad_out.mul_(weight)
    return total


def _select_(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, scratch: torch.Tensor) -> None:
    """``x <- x if m else y``, in place, for a 0/1 float mask and finite x, y (exact)."""
    x.mul_(m)
    torch.mul(y, m, out=scratch)
    y.sub_(scratch)
    x.add_(y)


def negative_terms(
    q: torch.Tensor,
    sigma: float,
    grad_scale: float = 1.0,
    weight: torch.Tensor | None = None,
    skip: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``w * -log(1 - eta(q; sigma))`` over all entries (float64) and its gradient.

    ``q`` is [N, K]; computed in float32 (float64 for float64 input). The gradient tensor, of the
    compute dtype, is scaled by ``grad_scale``. ``skip``: (rows, columns), rows ascending, of
    entries left out of the sum (their gradient is still written).
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    limits = _Limits(compute)
    n, k = q.shape
    grad = torch.empty((n, k), dtype=compute, device=q.device)
    total = torch.zeros((), dtype=torch.float64, device=q.device)
    if n == 0 or k == 0:
        return total, grad
    # On accelerators one chunk is best (launch overhead dominates); on CPU, cache-sized chunks.
    rows = n if q.device.type != "cpu" else max(1, min(n, _CHUNK_ELEMENTS // k))
    bufs = [torch.empty((rows, k), dtype=compute, device=q.device) for _ in range(7)]
    inv_sigma = 1.0 / sigma
    bounds = None
    if skip is not None:
        starts = torch.arange(0, n + rows, rows, device=q.device).clamp(max=n)
        bounds = torch.searchsorted(skip[0], starts).tolist()
    for i, start in enumerate(range(0, n, rows)):
        stop = start + rows
        chunk_skip = None
        if bounds is not None and bounds[i + 1] > bounds[i]:
            part = slice(bounds[i], bounds[i + 1])
            chunk_skip = (skip[0][part] - start, skip[1][part])
        total += _negative_terms_chunk(
            q[start:stop],
            inv_sigma,
            grad_scale,
            grad[start:stop],
            None if weight is None else weight[start:stop],
            bufs,
            limits,
            chunk_skip,
        )
    return total, grad


def positive_terms(
    z: torch.Tensor, sigma: float, low: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive loss ``a = exp(-z)`` and its gradient ``-a / sigma`` w.r.t. ``q``.

    Below ``low`` (a logit, so ``z < low / sigma``) the loss continues along its tangent at
    ``low``: ``a_L (1 + z_L - z)`` with slope ``-a_L / sigma`` in ``q``. ``low=None`` disables it.
    """
    a = torch.exp(-z)
    grad = -a / sigma
    if low is None:
        return a, grad
    z_low = low / sigma
    a_low = math.exp(-z_low)
    below = z < z_low
    loss = torch.where(below, a_low * (1.0 + z_low - z), a)
    grad = torch.where(below, torch.full_like(grad, -a_low / sigma), grad)
    return loss, grad


def positive_index(
    labels: torch.Tensor, num_columns: int, with_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the target-1 entries: the label column (background included when the
    layout has a background column; a background row has none in the C-column layout)."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    if with_background:
        return rows, labels
    fg = labels < num_columns
    return rows[fg], labels[fg]


class _GumbelBCEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, weight, positive_weight, sigma, low, with_background, sink):
        n = logits.shape[0]
        scale = 1.0 / max(n, 1)
        rows, cols = positive_index(labels, logits.shape[1], with_background)
        # The full pass sums the negative terms of every entry but the target-1 ones, whose
        # gradient it also writes and which are then replaced by the positive terms.
        total, grad = negative_terms(logits.detach(), sigma, scale, weight, skip=(rows, cols))
        if rows.numel():
            qp = logits.detach()[rows, cols].to(grad.dtype)
            pos_loss, pos_grad = positive_terms(qp / sigma, sigma, low)
            if positive_weight is not None:
                wp = positive_weight.to(qp.dtype)
            elif weight is not None:
                wp = weight.expand(logits.shape)[rows, cols].to(qp.dtype)
            else:
                wp = torch.ones_like(qp)
            total = total + (wp * pos_loss).sum(dtype=torch.float64)
            grad[rows, cols] = wp * pos_grad * scale
        ctx.save_for_backward(grad)
        ctx.input_dtype = logits.dtype
        if sink is not None:
            sink.append(grad)
        return (total * scale).to(torch.float32 if logits.dtype != torch.float64 else torch.float64)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.input_dtype), None, None, None, None, None, None, None


def gumbel_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    mode: GumbelMode | str = GumbelMode.STABLE,
    low: float = PAPER_CLIP[0],
    high: float = PAPER_CLIP[1],
    weight: torch.Tensor | None = None,
    positive_weight: torch.Tensor | None = None,
    with_background: bool = True,
    clamp_loss: bool = True,
    gradient_sink: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Gumbel binary cross-entropy, summed over classes and averaged over proposals (Eq. 3, 4).

    Args:
        logits: [N, K] classifier outputs, any float dtype; half precision is computed in float32.
        labels: [N] integer labels. With ``with_background`` (K = C + 1 columns), label C is the
            background and its target is 1 on the background column, as in the reference code.
            Without (K = C columns, the DropLoss family), label C means all targets are 0.
        temperature: sigma of Eq. 3.
        mode: ``stable`` (default), ``paper`` or ``none``; see the module docstring.
        low, high: the linearisation point of ``stable`` (``low``) and the clip range of
            ``paper`` (both). Logits, not tempered logits.
        weight: optional per-element weights ``w_ij`` of Eq. 4, [N, K] or broadcastable [1, K];
            boolean (the DropLoss weights of Eq. 5) or float.
        positive_weight: optional [P] weights of the target-1 entries (rows ascending, see
            :func:`positive_index`), replacing ``weight`` there (EQLv2's positive weights).
        clamp_loss: ``paper`` mode only: clamp the reduced loss to [0, 20] as the authors' plain
            Gumbel loss does (their DropLoss/EQL code does not).
        gradient_sink: ``stable``/``none`` modes: a list that receives the [N, K] gradient of the
            returned loss w.r.t. the logits, weights and 1/N included, which the forward pass
            computes anyway (EQLv2's statistics read it instead of recomputing it).

    Returns:
        A 0-dim float32 tensor (float64 for float64 logits).
    """
    mode = GumbelMode(mode)
    check_temperature(temperature)
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected logits [N, K] and labels [N], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    labels = labels.long()
    if mode is GumbelMode.PAPER:
        return _paper_recipe(
            logits,
            labels,
            temperature,
            low,
            high,
            weight,
            positive_weight,
            with_background,
            clamp_loss,
        )
    if mode is GumbelMode.STABLE and not math.isfinite(low):
        raise ValueError(f"the low bound of the stable mode must be finite, got {low}")
    if mode is GumbelMode.STABLE and -low / temperature > 80.0:
        raise ValueError(
            f"exp(-low / temperature) = exp({-low / temperature:g}) overflows float32; "
            "raise the low bound or the temperature"
        )
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if weight is not None:
        if (
            weight.dim() != 2
            or weight.shape[1] != logits.shape[1]
            or weight.shape[0]
            not in (
                1,
                logits.shape[0],
            )
        ):
            raise ValueError(
                f"weight {tuple(weight.shape)} does not fit logits {tuple(logits.shape)}"
            )
        weight = weight.expand(logits.shape)
        if weight.dtype != torch.bool:
            # Boolean weights (GOL's) stay boolean: the kernel multiplies by them chunk by chunk.
            weight = weight.detach().to(compute)
    if positive_weight is not None:
        positive_weight = positive_weight.detach().to(compute)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _GumbelBCEFunction.apply(
            logits,
            labels,
            weight,
            positive_weight,
            float(temperature),
            low if mode is GumbelMode.STABLE else None,
            with_background,
            gradient_sink,
        )


def one_hot_targets(labels: torch.Tensor, num_columns: int, with_background: bool) -> torch.Tensor:
    """Dense 0/1 targets [N, K]; a background label (== C) has no 1 in the C-column layout."""
    width = num_columns if with_background else num_columns + 1
    target = F.one_hot(labels.long(), width)
    return target if with_background else target[:, :num_columns]


def _paper_recipe(
    logits, labels, sigma, low, high, weight, positive_weight, with_background, clamp_loss
):
    check_clip_range(low, high)
    q = logits.float() if logits.dtype != torch.float64 else logits
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.exp(-torch.exp(-torch.clamp(q, low, high) / sigma))
        target = one_hot_targets(labels, q.shape[1], with_background).to(q.dtype)
        if weight is not None:
            weight = weight.expand(q.shape).to(q.dtype)
        if positive_weight is not None:
            weight = torch.ones_like(q) if weight is None else weight.clone()
            rows, cols = positive_index(labels, q.shape[1], with_background)
            weight[rows, cols] = positive_weight.to(q.dtype)
        loss = F.binary_cross_entropy(p, target, weight=weight, reduction="sum") / max(
            q.shape[0], 1
        )
        return torch.clamp(loss, *PAPER_LOSS_CLAMP) if clamp_loss else loss

"""LOCE's equilibrium loss (losses/methods/loce.py) against a float64 port of its authors' code
(LoceRoIHead._compute_batch_mean_score, _update_mean_score and equilibrium_loss), the BCE form
against the activation's float64 BCE of the shifted logits, gradcheck, and the RoI heads'
instance ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gumbel_analysis.losses import build_loss
from gumbel_analysis.model.heads import matched_instances

C = 6


def authors_step(mean_score, logits, labels, gt_of_row, alpha=0.9, bg_score=0.01):
    """One batch as the authors compute it, in float64 numpy. ``mean_score`` [C + 1] (the
    background last), ``gt_of_row`` the (image, gt index) of each positive row, None for the
    background rows. Returns the loss and the updated mean scores."""
    mean_score = mean_score.copy()
    e = np.exp(logits - logits.max(1, keepdims=True))
    scores = e / e.sum(1, keepdims=True)  # cls_score.detach().softmax(1)
    # _compute_batch_mean_score: per ground truth with positives, the mean of its own score
    per_gt: dict[tuple[int, int], list[float]] = {}
    label_of_gt = {}
    for row, gt in enumerate(gt_of_row):
        if gt is not None:
            per_gt.setdefault(gt, []).append(scores[row, labels[row]])
            label_of_gt[gt] = labels[row]
    batch_labels = np.array([label_of_gt[g] for g in per_gt])
    batch_means = np.array([np.mean(v) for v in per_gt.values()])
    # _update_mean_score
    for c in set(batch_labels.tolist()):
        means = batch_means[batch_labels == c]
        keep = alpha ** len(means)
        mean_score[c] = keep * mean_score[c] + (1 - keep) * means.mean()
    mean_score[-1] = bg_score
    # equilibrium_loss
    shifted = logits - logits.max(1, keepdims=True)
    numerator = mean_score[None, :] * np.exp(shifted)
    p = numerator / numerator.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(labels)), labels]).mean()
    return loss, mean_score


def make_batch(seed):
    """Two images' sampled rows: positives of a few ground truths (several rows each), then
    background rows; labels in 0..C (C background) and the (image, gt) of each positive."""
    rng = np.random.default_rng(seed)
    gts = [rng.integers(0, C, size=3), rng.integers(0, C, size=2)]
    gt_of_row, labels = [], []
    for image, classes in enumerate(gts):
        for g, c in enumerate(classes):
            for _ in range(rng.integers(1, 4)):
                gt_of_row.append((image, g))
                labels.append(int(c))
        for _ in range(5):
            gt_of_row.append(None)
            labels.append(C)
    logits = rng.normal(0, 2.5, size=(len(labels), C + 1))
    return logits, np.array(labels), gt_of_row


def instance_ids(gt_of_row):
    return torch.tensor([-1 if g is None else 10 * g[0] + g[1] for g in gt_of_row])


def test_softmax_equals_the_authors_code_over_three_batches():
    loss = build_loss("loce", C)
    loss.train()
    mean_score = np.full(C + 1, 0.01)
    for step in range(3):
        logits, labels, gt_of_row = make_batch(step)
        want, mean_score = authors_step(mean_score, logits, labels, gt_of_row)
        got = loss(torch.as_tensor(logits), torch.as_tensor(labels), instance_ids(gt_of_row))
        assert float(got) == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(loss.mean_score.numpy(), mean_score[:-1], rtol=1e-12)
    assert not np.allclose(mean_score[:-1], 0.01)  # the scores moved: the test could fail


def test_instances_count_once_each_not_per_proposal():
    logits, labels, gt_of_row = make_batch(5)
    grouped = build_loss("loce", C)
    grouped(torch.as_tensor(logits), torch.as_tensor(labels), instance_ids(gt_of_row))
    per_row = build_loss("loce", C)
    per_row(torch.as_tensor(logits), torch.as_tensor(labels))  # each positive its own instance
    assert not torch.allclose(grouped.mean_score, per_row.mean_score)
    rows_as_instances = [None if g is None else (100, i) for i, g in enumerate(gt_of_row)]
    _, want = authors_step(np.full(C + 1, 0.01), logits, labels, rows_as_instances)
    np.testing.assert_allclose(per_row.mean_score.numpy(), want[:-1], rtol=1e-12)


def _bce64(x: np.ndarray, y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return np.logaddexp(0, x) - y * x  # -y log s(x) - (1 - y) log(1 - s(x))
    # Gumbel (Eq. 3 at sigma 1): p = exp(-exp(-x)); -log p = exp(-x); -log(1 - p)
    return y * np.exp(-x) - (1 - y) * np.log(-np.expm1(-np.exp(-x)))


@pytest.mark.parametrize("activation", ["sigmoid", "gumbel"])
def test_bce_form_is_the_activations_bce_of_the_shifted_logits(activation):
    loss = build_loss("loce", C, activation=activation)
    loss.eval()  # fixed statistics
    loss.mean_score.copy_(torch.linspace(0.01, 0.9, C, dtype=torch.float64))
    logits, labels, _ = make_batch(7)
    logits = np.clip(logits, -3, 6)
    got = loss(torch.as_tensor(logits), torch.as_tensor(labels))
    margins = np.log(np.append(np.linspace(0.01, 0.9, C), 0.01) / 0.01)
    y = np.eye(C + 1)[labels]
    want = _bce64(logits + margins, y, activation).sum() / len(labels)
    assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("activation", [None, "sigmoid", "gumbel"])
def test_gradcheck(activation):
    loss = build_loss("loce", C, activation=activation)
    loss.eval()
    loss.mean_score.copy_(torch.linspace(0.02, 0.7, C, dtype=torch.float64))
    logits, labels, _ = make_batch(3)
    z = torch.as_tensor(np.clip(logits, -3, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: loss(q, torch.as_tensor(labels)), (z,))


def test_mean_scores_travel_in_the_state_dict_and_options_are_checked():
    loss = build_loss("loce", C, loce_alpha=0.5, loce_bg_score=0.05)
    assert "mean_score" in loss.state_dict()
    assert float(loss.margins()[-1]) == pytest.approx(np.log(5.0))
    with pytest.raises(ValueError, match="--loce-alpha"):
        build_loss("loce", C, loce_alpha=1.0)


def test_heads_give_each_positive_its_ground_truth_and_background_minus_one():
    labels = [torch.tensor([3, 0, 3, 1]), torch.tensor([0, 2, 2])]
    matched = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 0])]
    targets = [{"boxes": torch.zeros(3, 4)}, {"boxes": torch.zeros(2, 4)}]
    got = matched_instances(labels, matched, targets)
    assert got.tolist() == [0, -1, 1, 2, -1, 4, 3]

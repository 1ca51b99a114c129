"""The registry's contract: layouts, inference activations, initialisation, baselines' values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.losses import available_losses, build_loss, loss_entry
from gumbel_analysis.math import eta

FREQ = torch.tensor([1e-4, 5e-4, 0.05, 0.2, 0.3], dtype=torch.float64)
GROUPS = ["r", "r", "c", "f", "f"]
C = 5
#: Every registered name with every activation it takes.
LOSS_ACTIVATIONS = [(n, a) for n in available_losses() for a in loss_entry(n).activations]


def test_all_named_losses_are_registered():
    assert set(available_losses()) >= {"gumbel", "sigmoid", "softmax", "gol", "gol-star"}


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"available: .*gumbel"):
        build_loss("focal", C)


@pytest.mark.parametrize(("name", "activation"), LOSS_ACTIVATIONS)
def test_layout_scores_and_init(name, activation):
    loss = build_loss(name, C, FREQ, GROUPS, activation=activation)
    extra = 2 if name == "seesaw" else int(loss.with_background)  # Seesaw: 2 objectness columns
    assert loss.num_outputs == C + extra
    layer = nn.Linear(16, loss.num_outputs)
    loss.init_classifier(layer)
    logits = layer(torch.randn(7, 16))
    scores = loss.scores(logits)
    assert scores.shape == (7, C)
    assert ((scores >= 0) & (scores <= 1)).all()
    labels = torch.randint(0, C + 1, (7,))
    value = loss(logits, labels)
    assert value.shape == () and torch.isfinite(value)
    with pytest.raises(ValueError, match="expects logits"):
        loss(torch.zeros(7, loss.num_outputs + 1), labels)
    with pytest.raises(ValueError, match="labels must lie"):
        loss(logits, torch.full((7,), C + 1))


@pytest.mark.parametrize(("name", "activation"), LOSS_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_loss_is_finite_for_extreme_logits(name, activation, dtype):
    loss = build_loss(name, C, FREQ, GROUPS, activation=activation)
    grid = torch.tensor([-1e4, -100.0, -4.0, 0.0, 10.0, 100.0, 1e4])
    logits = grid[torch.randint(0, 7, (64, loss.num_outputs))].to(dtype).requires_grad_()
    labels = torch.randint(0, C + 1, (64,))
    value = loss(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_gumbel_init_is_section_1_1_and_scores_are_eta():
    loss = build_loss("gumbel", C, temperature=1.1)
    layer = nn.Linear(8, C + 1)
    loss.init_classifier(layer)
    assert (layer.weight == 1e-3).all()
    assert layer.bias.detach() == pytest.approx(-1.1 * math.log(math.log(C + 1)), rel=1e-6)
    logits = torch.randn(3, C + 1)
    torch.testing.assert_close(loss.scores(logits), eta(logits, 1.1)[:, :C])


def test_sigmoid_init_uses_the_usual_prior():
    loss = build_loss("sigmoid", C)
    layer = nn.Linear(8, C + 1)
    loss.init_classifier(layer)
    assert torch.sigmoid(layer.bias.detach()) == pytest.approx(0.01, rel=1e-5)


def test_sigmoid_and_softmax_values_match_float64_references():
    logits = torch.randn(20, C + 1, dtype=torch.float64) * 4
    labels = torch.randint(0, C + 1, (20,))
    y = F.one_hot(labels, C + 1).double()
    p = torch.sigmoid(logits)
    sigmoid_ref = -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum() / 20
    softmax_ref = -torch.log_softmax(logits, 1)[torch.arange(20), labels].mean()
    assert float(build_loss("sigmoid", C)(logits, labels)) == pytest.approx(
        float(sigmoid_ref), rel=1e-6
    )
    assert float(build_loss("softmax", C)(logits, labels)) == pytest.approx(
        float(softmax_ref), rel=1e-6
    )
    scores = build_loss("softmax", C).scores(logits)
    torch.testing.assert_close(scores.double(), torch.softmax(logits, 1)[:, :C], rtol=1e-5, atol=0)

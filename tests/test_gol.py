"""DropLoss weights (Eq. 5, 6), GOL, GOL*, DropLoss and EQL on hand-built batches."""

import pytest
import torch
import torch.nn.functional as F

from gumbel_analysis.losses import (
    LVIS_V1_LAMBDA,
    LVIS_V1_TRAIN_IMAGES,
    build_loss,
    drop_weights,
    gumbel_bce,
    keep_probabilities,
)

# Classes 0 and 1 are below lambda ("rare"), 2 and 3 above. Label 4 is the background.
RARE = torch.tensor([True, True, False, False])
FREQ = torch.tensor([1e-4, 5e-4, 0.05, 0.2], dtype=torch.float64)
LAMBDA = 1e-3


def test_foreground_rows_drop_rare_negatives_and_keep_the_positive():
    labels = torch.tensor([0, 2, 3])
    w = drop_weights(labels, RARE)
    assert w.dtype == torch.bool  # 0/1 weights, a quarter of the memory of float32
    w = w.float()
    expected = torch.tensor(
        [
            [1.0, 0.0, 1.0, 1.0],  # label 0 (rare): its own column kept, rare class 1 dropped
            [0.0, 0.0, 1.0, 1.0],  # label 2: both rare negatives dropped
            [0.0, 0.0, 1.0, 1.0],
        ]
    )
    assert torch.equal(w, expected)


@pytest.mark.parametrize(
    ("labels", "mu_equation", "mu_reference"),
    [
        # 4 foreground: 1 below lambda (label 1), 3 above -> 1/4 and 3/4 (reference: 1/4 and 1).
        ([1, 2, 3, 3, 4, 4], [0.25, 0.25, 0.75, 0.75], [0.25, 0.25, 1.0, 1.0]),
        # all foreground below lambda -> 1 and 0 (reference: 1 and 1)
        ([0, 1, 4], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]),
        # no foreground: mu = 1, everything kept
        ([4, 4, 4], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_keep_probabilities_follow_eq6_and_the_reference_variant(labels, mu_equation, mu_reference):
    labels = torch.tensor(labels)
    fg = labels[labels < 4]
    assert keep_probabilities(fg, RARE, "equation").tolist() == mu_equation
    assert keep_probabilities(fg, RARE, "reference").tolist() == mu_reference


@pytest.mark.parametrize("variant", ["equation", "reference"])
def test_background_rows_are_bernoulli_draws_with_mu(variant):
    # 1 rare and 3 frequent foreground proposals, 20000 background ones.
    labels = torch.cat([torch.tensor([0, 2, 2, 3]), torch.full((20000,), 4)])
    gen = torch.Generator().manual_seed(1)
    w = drop_weights(labels, RARE, variant=variant, generator=gen)
    bg = w[4:].float()
    assert set(bg.unique().tolist()) <= {0.0, 1.0}
    kept = bg.mean(0)
    expected = keep_probabilities(labels[:4], RARE, variant)
    torch.testing.assert_close(kept, expected, atol=0.015, rtol=0)
    # The same generator state gives the same draw.
    again = drop_weights(labels, RARE, variant=variant, generator=torch.Generator().manual_seed(1))
    assert torch.equal(w, again)


def test_reference_variant_always_keeps_background_negatives_above_lambda():
    labels = torch.cat([torch.tensor([0]), torch.full((500,), 4)])
    w = drop_weights(labels, RARE, variant="reference", generator=torch.Generator().manual_seed(0))
    assert (w[1:, 2:] == 1).all()
    # Only rare foreground: mu_below = 1 as well, so here everything is kept.
    assert (w[1:, :2] == 1).all()


def test_eql_weights_keep_every_background_negative():
    labels = torch.tensor([0, 3, 4, 4, 4])
    w = drop_weights(labels, RARE, background_dropping=False).float()
    assert (w[2:] == 1).all()
    assert w[1].tolist() == [0.0, 0.0, 1.0, 1.0]


def reference_gol(logits, labels, weight):
    """Eq. 4 in float64 from the definitions: -sum_j w_j log(p_j) / N, C columns."""
    q = logits.double()
    p = torch.exp(-torch.exp(-q))
    y = F.one_hot(labels, q.shape[1] + 1)[:, : q.shape[1]].double()
    elem = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    return (weight.double() * elem).sum() / q.shape[0]


@pytest.mark.parametrize("name", ["gol", "gol-star"])
@pytest.mark.parametrize("variant", ["equation", "reference"])
def test_gol_equals_the_weighted_loss_of_eq4(name, variant):
    gen_data = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 4, generator=gen_data, dtype=torch.float64) * 2
    labels = torch.randint(0, 5, (40,), generator=gen_data)
    options = {"variant": variant} if name == "gol" else {}  # GOL* has no background rule
    loss = build_loss(name, 4, class_frequency=FREQ, lambda_=LAMBDA, **options)
    loss.generator = torch.Generator().manual_seed(9)
    got = loss(logits, labels)
    weight = drop_weights(
        labels,
        RARE,
        background_dropping=name == "gol",
        variant=variant,
        generator=torch.Generator().manual_seed(9),
    )
    assert float(got) == pytest.approx(float(reference_gol(logits, labels, weight)), rel=1e-12)


def test_dropped_negatives_get_no_gradient():
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 4, 4, 4, 4])
    loss = build_loss("gol", 4, class_frequency=FREQ, lambda_=LAMBDA)
    loss.generator = torch.Generator().manual_seed(0)
    loss(logits, labels).backward()
    weight = drop_weights(labels, RARE, generator=torch.Generator().manual_seed(0))
    assert (logits.grad[weight == 0] == 0).all()
    assert (logits.grad[weight == 1] != 0).all()


def test_no_foreground_batch_is_finite_and_equals_the_plain_loss():
    logits = torch.randn(8, 4) * 3
    labels = torch.full((8,), 4)
    for name in ("gol", "gol-star", "droploss", "eql"):
        loss = build_loss(name, 4, class_frequency=FREQ, lambda_=LAMBDA)
        value = loss(logits, labels)
        assert torch.isfinite(value)
        if name.startswith("gol"):
            assert float(value) == pytest.approx(
                float(gumbel_bce(logits, labels, with_background=False)), rel=1e-6
            )


def test_droploss_is_weighted_sigmoid_bce():
    logits = torch.randn(12, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 2, 3])
    loss = build_loss("droploss", 4, class_frequency=FREQ, lambda_=LAMBDA)
    loss.generator = torch.Generator().manual_seed(5)
    got = loss(logits, labels)
    # DropLoss's default rule is its authors' code (background negatives of frequent classes kept).
    w = drop_weights(labels, RARE, variant="reference", generator=torch.Generator().manual_seed(5))
    y = F.one_hot(labels, 5)[:, :4].double()
    p = torch.sigmoid(logits)
    ref = -(w * (y * torch.log(p) + (1 - y) * torch.log(1 - p))).sum() / 12
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


def test_lvis_default_lambda_selects_rare_and_common_groups():
    # LVIS v1 group borders in training images: rare <= 10, common 11..100, frequent > 100.
    image_counts = torch.tensor([1, 10, 11, 100, 101, 110, 5000], dtype=torch.float64)
    freq = image_counts / LVIS_V1_TRAIN_IMAGES
    loss = build_loss("gol", 7, class_frequency=freq)
    assert loss.lambda_ == LVIS_V1_LAMBDA
    assert loss.rare.tolist() == [True, True, True, True, False, False, False]
    assert loss.num_rare_classes == 4
    assert "rare_classes=4" in repr(loss)
    # The released configuration's 0.0011 also catches frequent classes of 101-110 images.
    ref = build_loss("gol", 7, class_frequency=freq, lambda_=0.0011)
    assert ref.num_rare_classes == 6


def test_drop_family_requires_class_frequency_of_the_right_size():
    with pytest.raises(ValueError, match="class_frequency"):
        build_loss("gol", 4)
    with pytest.raises(ValueError, match="entries"):
        build_loss("gol", 5, class_frequency=FREQ)
    with pytest.raises(ValueError, match="lambda"):
        build_loss("gol", 4, class_frequency=FREQ, lambda_=0.0)

"""Every long-tail method with either activation, against independent float64 computations of its
paper's formula (ACSL, Federated Loss, EQLv2, Seesaw; EQL/DropLoss/GOL are in test_gol.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import build_loss, federated_classes, gumbel_bce

C = 6
FREQ = torch.tensor([1e-4, 3e-4, 2e-3, 5e-3, 0.05, 0.2], dtype=torch.float64)
GROUPS = ["r", "r", "c", "c", "f", "f"]


def elementwise_f64(q, y, activation, sigma=1.0, low=-4.0):
    """The unweighted elementwise BCE in float64, straight from its definition; the Gumbel
    positive continues along its tangent below the logit ``low`` (the default stable mode)."""
    q = q.double()
    if activation == "sigmoid":
        p = torch.sigmoid(q)
        return -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    z, z_low = q / sigma, low / sigma
    positive = torch.where(z < z_low, math.exp(-z_low) * (1 + z_low - z), torch.exp(-z))
    return y * positive - (1 - y) * torch.log(-torch.expm1(-torch.exp(-z)))  # Eq. 4


def probabilities_f64(q, activation, sigma=1.0):
    q = q.double()
    return torch.sigmoid(q) if activation == "sigmoid" else torch.exp(-torch.exp(-q / sigma))


def batch(n=48, k=C + 1, seed=0, bg_share=0.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.5
    labels = torch.randint(0, C, (n,), generator=g)
    labels[torch.rand(n, generator=g) < bg_share] = C
    return logits, labels


# --- ACSL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["sigmoid", "gumbel"])
def test_acsl_equation_keeps_exactly_the_confident_negatives_and_the_label(activation):
    logits, labels = batch(seed=1)
    loss = build_loss("acsl", C, FREQ, GROUPS, activation=activation, variant="equation")
    got = loss(logits, labels)
    p = probabilities_f64(logits, activation)
    y = F.one_hot(labels, C + 1).double()
    w = ((p >= 0.7) | (y > 0)).double()
    assert torch.equal(loss.last_weights.double(), w)
    ref = (w * elementwise_f64(logits, y, activation)).sum() / len(labels)
    assert float(got) == pytest.approx(float(ref), rel=1e-10)


def test_acsl_reference_background_rule_keeps_each_group_on_its_share():
    n_bg = 300
    logits = torch.full((n_bg + 2, C + 1), 3.0, dtype=torch.float64)  # every score above xi
    labels = torch.tensor([0, 4] + [C] * n_bg)
    loss = build_loss("acsl", C, FREQ, GROUPS, activation="gumbel")
    loss.generator = torch.Generator().manual_seed(4)
    loss(logits, labels)
    w = loss.last_weights[2:]
    # Background rows ignore the scores: the background column always, frequent classes on
    # every row, common on floor(0.1 n), rare on floor(0.01 n) rows.
    assert w[:, C].all()
    assert w[:, 4:6].all()
    kept_common = w[:, 2:4].any(1)
    kept_rare = w[:, 0:2].any(1)
    assert int(kept_common.sum()) == math.floor(0.1 * n_bg)
    assert int(kept_rare.sum()) == math.floor(0.01 * n_bg)
    assert (w[:, 2] == w[:, 3]).all() and (w[:, 0] == w[:, 1]).all()  # whole groups at once
    # Foreground rows keep every confident negative.
    assert loss.last_weights[:2].all()


def test_acsl_uses_detached_scores_and_gradcheck():
    logits, labels = batch(n=10, seed=2)
    loss = build_loss("acsl", C, FREQ, GROUPS, activation="gumbel", variant="equation")
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda q: loss(q, labels), (logits,))


# --- Federated Loss --------------------------------------------------------------------------


def test_federated_classes_are_the_ground_truth_topped_up():
    labels = torch.tensor([1, 1, 4, C])
    mask = federated_classes(labels, FREQ.sqrt(), 5, torch.Generator().manual_seed(0))
    # 3 labels present (background counted as in the authors' code): 2 sampled on top.
    assert mask[1] and mask[4] and int(mask.sum()) == 4
    everything = federated_classes(labels, FREQ.sqrt(), 50)
    assert everything.all()  # more asked than classes: all of them


def test_federated_sampling_follows_image_count_to_the_power():
    labels = torch.tensor([5])
    weight = FREQ.sqrt()
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(C)
    draws = 6000
    for _ in range(draws):
        counts += federated_classes(labels, weight, 2, g).double()
    expected = weight[:5] / weight[:5].sum()
    observed = counts[:5] / draws
    # Binomial standard error at most sqrt(0.25 / 6000) = 0.0065: 4 of them is 0.026.
    assert torch.allclose(observed, expected.float(), atol=0.026)
    assert counts[5] == draws


@pytest.mark.parametrize("activation", ["sigmoid", "gumbel"])
def test_federated_loss_is_bce_on_the_sampled_columns(activation):
    logits, labels = batch(k=C, seed=3)
    loss = build_loss("federated", C, FREQ, activation=activation, fed_classes=4)
    loss.generator = torch.Generator().manual_seed(7)
    got = loss(logits, labels)
    mask = federated_classes(labels, FREQ.sqrt(), 4, torch.Generator().manual_seed(7))
    y = F.one_hot(labels, C + 1)[:, :C].double()
    ref = (mask.double() * elementwise_f64(logits, y, activation)).sum() / len(labels)
    assert float(got) == pytest.approx(float(ref), rel=1e-10)
    q = logits.clone().requires_grad_()
    every = build_loss("federated", C, FREQ, activation=activation, fed_classes=C + 1)
    assert torch.autograd.gradcheck(lambda x: every(x, labels), (q,))


# --- EQLv2 -----------------------------------------------------------------------------------


def eqlv2_weights_f64(pos, neg, gamma=12.0, mu=0.8, alpha=4.0):
    ratio = pos / (neg + 1e-10)
    q = 1.0 / (1.0 + torch.exp(-gamma * (ratio - mu)))
    return torch.cat([q, torch.ones(1, dtype=q.dtype)]), torch.cat(
        [1 + alpha * (1 - q), torch.ones(1, dtype=q.dtype)]
    )


@pytest.mark.parametrize("activation", ["sigmoid", "gumbel"])
def test_eqlv2_loss_and_statistics_match_the_paper(activation):
    loss = build_loss("eqlv2", C, activation=activation)
    loss.train()
    g = torch.Generator().manual_seed(5)
    loss.pos_grad.copy_(torch.rand(C, generator=g, dtype=torch.float64) * 3)
    loss.neg_grad.copy_(torch.rand(C, generator=g, dtype=torch.float64) * 3 + 0.5)
    loss.updates.fill_(1)
    neg_w, pos_w = eqlv2_weights_f64(loss.pos_grad.clone(), loss.neg_grad.clone())
    logits, labels = batch(seed=6)
    y = F.one_hot(labels, C + 1).double()
    w = torch.where(y > 0, pos_w[None, :], neg_w[None, :])
    before = loss.pos_grad.clone(), loss.neg_grad.clone()
    got = loss(logits, labels)
    ref = (w * elementwise_f64(logits, y, activation)).sum() / len(labels)
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    # The statistics: |d l / d q| per entry by autograd of the float64 formula, times w.
    q = logits.clone().requires_grad_()
    elementwise_f64(q, y, activation).sum().backward()
    grad = q.grad.abs() * w
    pos_ref = (grad * y).sum(0)[:C]
    neg_ref = (grad * (1 - y)).sum(0)[:C]
    torch.testing.assert_close(loss.pos_grad - before[0], pos_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.neg_grad - before[1], neg_ref, rtol=1e-5, atol=1e-6)


def test_eqlv2_starts_with_unit_weights_and_scores_use_the_background():
    loss = build_loss("eqlv2", C, activation="sigmoid")
    neg, pos = loss.class_weights()
    assert torch.allclose(neg, torch.ones_like(neg)) and torch.allclose(pos, torch.ones_like(pos))
    logits = torch.randn(5, C + 1)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(loss.scores(logits), p[:, :C] * (1 - p[:, C:]))
    loss.eval()  # no statistics in eval: gradcheck sees a fixed function
    q = torch.randn(8, C + 1, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, C, C, 5, C, 3])
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (q,))


def test_eqlv2_statistics_travel_in_the_state_dict():
    a = build_loss("eqlv2", C, activation="gumbel")
    logits, labels = batch(seed=8)
    a(logits, labels)
    b = build_loss("eqlv2", C, activation="gumbel")
    b.load_state_dict(a.state_dict())
    assert float(a(logits, labels)) == float(b(logits, labels))
    assert torch.equal(a.pos_grad, b.pos_grad) and int(a.updates) == 2


# --- Seesaw ----------------------------------------------------------------------------------


def seesaw_f64(logits, labels, counts, p=0.8, q=2.0, eps=1e-2):
    """Seesaw by its definition, row by row (float64)."""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        z = logits[i].double()
        if labels[i] == C:
            total += -torch.log_softmax(z[C:], 0)[1]
            continue
        k = int(labels[i])
        total += -torch.log_softmax(z[C:], 0)[0]
        s = torch.softmax(z[:C].detach(), 0)
        terms = []
        for j in range(C):
            if j == k:
                terms.append(torch.exp(z[j]))
                continue
            nj, nk = max(float(counts[j]), 1.0), max(float(counts[k]), 1.0)
            m = (nj / nk) ** p if nj < nk else 1.0
            ratio = float(s[j] / max(float(s[k]), eps))
            c = ratio**q if ratio > 1 else 1.0
            terms.append(m * c * torch.exp(z[j]))
        total += -(z[k] - torch.log(torch.stack(terms).sum()))
    return total / n


def test_seesaw_matches_its_definition_and_counts_every_label():
    loss = build_loss("seesaw", C)
    loss.train()
    loss.cum_samples.copy_(torch.tensor([50.0, 3.0, 800.0, 0.0, 20.0, 7.0, 900.0]))
    logits, labels = batch(k=C + 2, seed=9)
    before = loss.cum_samples.clone()
    got = loss(logits, labels)
    counts = before + torch.bincount(labels, minlength=C + 1).double()
    assert torch.equal(loss.cum_samples, counts)
    ref = seesaw_f64(logits, labels, counts[:C])
    assert float(got) == pytest.approx(float(ref), rel=1e-10)
    # The compensation factor uses detached scores: gradcheck applies to the mitigation alone.
    mitigation = build_loss("seesaw", C, seesaw_q=0.0)
    mitigation.eval()
    mitigation.cum_samples.copy_(counts)
    q = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mitigation(x, labels), (q,))
    scores = loss.scores(logits)
    ref_scores = torch.softmax(logits[:, :C], 1) * torch.softmax(logits[:, C:], 1)[:, :1]
    torch.testing.assert_close(scores.double(), ref_scores.float().double(), rtol=1e-6, atol=0)


# --- The activation axis, aliases, initialisation, options ------------------------------------


@pytest.mark.parametrize(
    ("alias", "method", "options"),
    [
        ("gumbel", "bce", {}),
        ("gol", "droploss", {"variant": "equation"}),
        ("gol-star", "eql", {}),
    ],
)
def test_aliases_are_their_method_with_gumbel(alias, method, options):
    logits, labels = batch(k=C + 1 if method == "bce" else C, seed=10)
    a = build_loss(alias, C, FREQ, GROUPS)
    b = build_loss(method, C, FREQ, GROUPS, activation="gumbel", **options)
    a.generator = torch.Generator().manual_seed(1)
    b.generator = torch.Generator().manual_seed(1)
    assert float(a(logits, labels)) == float(b(logits, labels))


@pytest.mark.parametrize(
    ("name", "prior"), [("droploss", 1e-3), ("eql", 1e-3), ("bce", 1e-2), ("eqlv2", 1e-3)]
)
def test_sigmoid_initial_prior_per_method_and_gumbel_bias(name, prior):
    layer = nn.Linear(4, C + 1)
    build_loss(name, C, FREQ, GROUPS, activation="sigmoid").init_classifier(layer)
    assert float(torch.sigmoid(layer.bias[0])) == pytest.approx(prior, rel=1e-5)
    build_loss(name, C, FREQ, GROUPS, activation="gumbel").init_classifier(layer)
    assert float(layer.bias[0]) == pytest.approx(-math.log(math.log(C + 1)), rel=1e-6)


def test_options_are_checked_against_the_declaration():
    with pytest.raises(InputError, match="--eqlv2-gamma does not apply to --loss gumbel"):
        build_loss("gumbel", C, eqlv2_gamma=3.0)
    with pytest.raises(InputError, match="--activation gumbel does not apply to --loss seesaw"):
        build_loss("seesaw", C, activation="gumbel")
    with pytest.raises(InputError, match=r"--acsl-xi must be a number in \(0, 1\)"):
        build_loss("acsl", C, FREQ, GROUPS, acsl_xi=1.5)
    with pytest.raises(InputError, match="--fed-classes must be an integer"):
        build_loss("federated", C, FREQ, fed_classes=2.5)
    with pytest.raises(InputError, match="--temperature must be"):
        build_loss("eql", C, FREQ, activation="gumbel", temperature=float("nan"))


def test_paper_mode_of_the_weighted_methods_is_not_clamped_at_20():
    # The authors' DropLoss/EQL code clamps the logits but not the loss (their plain loss does).
    logits = torch.full((2, C), 10.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([C, C])
    loss = build_loss("gol-star", C, FREQ, gumbel_mode="paper")
    value = loss(logits, labels)
    ref = -math.log(-math.expm1(-math.exp(-10.0))) * C  # per row, every column a negative
    assert float(value) == pytest.approx(ref, rel=1e-9) and float(value) > 20
    plain = build_loss("gumbel", C, gumbel_mode="paper")
    assert float(plain(torch.full((2, C + 1), 10.0), torch.tensor([0, 0]))) == 20.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_divided_by_sigma_in_float32(dtype):
    g = torch.Generator().manual_seed(11)
    q = (torch.randn(64, C + 1, generator=g) * 3).to(dtype)
    labels = torch.randint(0, C + 1, (64,), generator=g)
    sigma = 0.9
    got = gumbel_bce(q, labels, temperature=sigma)
    y = F.one_hot(labels, C + 1).double()
    ref = elementwise_f64(q.double(), y, "gumbel", sigma).sum() / 64
    assert float(got) == pytest.approx(float(ref), rel=2e-6)


# --- Across ranks ----------------------------------------------------------------------------


def _rank_statistics(rank, world, init_file, name, activation, logits, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss = build_loss(name, C, activation=activation)
    loss.train()
    half = logits.shape[1] // world  # logits: [steps, N, K]
    for step in range(2):
        rows = slice(rank * half, (rank + 1) * half)
        loss(logits[step][rows], labels[step][rows])
    if rank == 0:
        torch.save(loss.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "activation"),
    [
        ("eqlv2", "sigmoid"),
        ("eqlv2", "gumbel"),
        ("seesaw", None),
        ("loce", None),
        ("loce", "gumbel"),
    ],
)
def test_statistics_over_two_gloo_ranks_equal_one_process(name, activation, tmp_path):
    import torch.multiprocessing as mp

    k = C + 2 if name == "seesaw" else C + 1
    steps = [batch(n=40, k=k, seed=20 + s) for s in range(2)]
    logits = torch.stack([s[0] for s in steps])
    labels = torch.stack([s[1] for s in steps])
    out = tmp_path / "state.pt"
    mp.spawn(
        _rank_statistics,
        args=(2, tmp_path / "init", name, activation, logits, labels, out),
        nprocs=2,
        join=True,
    )
    together = build_loss(name, C, activation=activation)
    together.train()
    for step in range(2):
        together(logits[step], labels[step])
    state = torch.load(out)
    for key, value in together.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-12)


# --- The gradient recorder sees every method's weights ----------------------------------------


@pytest.mark.parametrize(("name", "activation"), [("acsl", "gumbel"), ("eqlv2", "sigmoid")])
def test_recorder_counts_dropped_and_reweighted_negatives(name, activation):
    from gumbel_analysis.hooks.gradient_recorder import GradientRecorderHook

    logits, labels = batch(seed=12)
    loss = build_loss(name, C, FREQ, GROUPS, activation=activation)
    if name == "eqlv2":  # statistics that give weights other than 1
        loss.pos_grad.copy_(torch.linspace(0.1, 3.0, C, dtype=torch.float64))
        loss.neg_grad.fill_(1.0)
        loss.updates.fill_(1)
    recorder = GradientRecorderHook(C, weights_fn=lambda: loss.last_weights)
    x = logits.clone().requires_grad_()
    recorder.watch(x, labels)
    loss(x, labels).backward()
    sums = recorder.pop()
    w = loss.last_weights.double()[:, :C]
    y = F.one_hot(labels, C + 1)[:, :C].double()
    assert ((w != 0) & (w != 1)).any() if name == "eqlv2" else (w == 0).any()
    # negative_count: the negatives' weights; negative_sum: their |gradient| (per proposal)
    torch.testing.assert_close(sums[3], (w * (1 - y)).sum(0))
    grad = x.grad.double()[:, :C] * len(labels)
    torch.testing.assert_close(sums[2], (grad.abs() * (1 - y)).sum(0))
    assert (sums[2][w.sum(0) == 0] == 0).all()

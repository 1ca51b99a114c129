"""DisAlign (losses/methods/disalign.py, model/disalign.py, engine/first_stage.py): the
generalized re-weighting against a float64 port of its authors' _init_weights, the loss and the
logit adjustment against float64 equations with gradcheck, and ``gumbel train --loss disalign
--from RUN``: the first stage frozen, only the alignment trained, one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.losses import build_loss
from gumbel_analysis.losses.methods.disalign import reweighting
from gumbel_analysis.model.disalign import DisAlignBoxPredictor

runner = CliRunner()
C = 5
COUNTS = np.array([2.0, 7.0, 40.0, 300.0, 1000.0])
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


def authors_weights(num_shots: np.ndarray, exp_scale: float) -> np.ndarray:
    """A float64 port of GRWFastRCNNOutputs._init_weights: 1 / ratio^scale, normalised to sum
    to the number of foreground classes, then 1 for the background."""
    ratio = num_shots / np.sum(num_shots)
    w = 1 / ratio**exp_scale
    w = w / np.sum(w) * len(num_shots)
    return np.append(w, 1.0)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 1.2])
def test_reweighting_equals_the_authors_code(rho):
    got = reweighting(torch.as_tensor(COUNTS / 1234.0), rho)  # f_c: only the ratios matter
    np.testing.assert_allclose(got.numpy(), authors_weights(COUNTS, rho), rtol=1e-12)


def batch(seed=0, n=30):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(n, C + 1))
    labels = rng.integers(0, C + 1, size=n)
    return logits, labels


def _bce64(x, y, activation):
    if activation == "sigmoid":
        return np.logaddexp(0, x) - y * x
    return y * np.exp(-x) - (1 - y) * np.log(-np.expm1(-np.exp(-x)))


@pytest.mark.parametrize("activation", [None, "sigmoid", "gumbel"])
def test_loss_is_the_reweighted_mean_over_the_labels_weights(activation):
    loss = build_loss("disalign", C, torch.as_tensor(COUNTS / 1234.0), activation=activation)
    logits, labels = batch(1)
    logits = np.clip(logits, -3.5, 6)  # where stable Gumbel is the bare formula (above -4)
    w = authors_weights(COUNTS, 0.8)[labels]
    if activation is None:
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        per_row = -log_p[np.arange(len(labels)), labels]
    else:
        per_row = _bce64(logits, np.eye(C + 1)[labels], activation).sum(1)
    want = (w * per_row).sum() / w.sum()
    got = loss(torch.as_tensor(logits), torch.as_tensor(labels))
    assert float(got) == pytest.approx(want, rel=1e-11)
    z = torch.as_tensor(np.clip(logits, -3, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda q: loss(q, torch.as_tensor(labels)), (z,))


def test_the_adjustment_is_eq_of_the_paper_and_starts_as_the_identity():
    loss = build_loss("disalign", C, torch.as_tensor(COUNTS / 1234.0))
    predictor = DisAlignBoxPredictor(8, loss).double()
    x = torch.randn(6, 8, dtype=torch.float64)
    base = predictor.cls_score(x)
    torch.testing.assert_close(predictor(x)[0], base, atol=1e-6, rtol=0)  # identity, nearly
    with torch.no_grad():
        predictor.logit_scale.copy_(torch.linspace(0.5, 2.0, C))
        predictor.logit_bias.copy_(torch.linspace(-1, 1, C))
        predictor.confidence_layer.weight.normal_()
    z, xs = base.detach().numpy(), x.numpy()
    conf = 1 / (
        1
        + np.exp(
            -(
                xs @ predictor.confidence_layer.weight.detach().numpy().T
                + predictor.confidence_layer.bias.detach().numpy()
            )
        )
    )
    alpha, beta = np.linspace(0.5, 2.0, C), np.linspace(-1, 1, C)
    want = z.copy()
    want[:, :C] = conf * (alpha * z[:, :C] + beta) + (1 - conf) * z[:, :C]  # background as is
    np.testing.assert_allclose(predictor(x)[0].detach().numpy(), want, rtol=1e-12)
    from torch.func import functional_call

    names = ("logit_scale", "logit_bias", "confidence_layer.weight", "confidence_layer.bias")
    params = dict(predictor.named_parameters())

    def aligned(*values):
        return functional_call(predictor, dict(zip(names, values, strict=True)), (x,))[0]

    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(aligned, inputs)
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: predictor(v)[0], (xg,))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


def train_args(data_dir, out, *extra):
    return [
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--no-grad-log",
        "--no-eval",
        "--max-iters",
        "2",
        "--epochs",
        "1",
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def first_stage(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "gumbel"
    result = runner.invoke(
        app, train_args(data_dir, out, "--loss", "gumbel", "--temperature", "0.9")
    )
    assert result.exit_code == 0, result.output
    return out


def test_second_stage_trains_only_the_alignment(first_stage, tmp_path):
    out = tmp_path / "disalign"
    result = runner.invoke(
        app,
        [
            "train",
            "--loss",
            "disalign",
            "--from",
            str(first_stage),
            "--out",
            str(out),
            "--max-iters",
            "3",
            "--no-grad-log",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["activation"] == "gumbel" and config["loss_options"]["temperature"] == 0.9
    assert config["first_stage"]["loss"] == "gumbel" and config["epochs"] == 2
    before = torch.load(first_stage / "model_final.pt", weights_only=False)["model"]
    after = torch.load(out / "model_final.pt", weights_only=False)["model"]
    shared = [k for k in before if k in after]
    assert len(shared) > 100
    for k in shared:
        assert torch.equal(before[k], after[k]), k  # frozen: weights and BatchNorm statistics
    new = sorted(set(after) - set(before))
    assert new == [
        f"roi_heads.box_predictor.{n}"
        for n in ("confidence_layer.bias", "confidence_layer.weight", "logit_bias", "logit_scale")
    ]
    assert not torch.equal(after["roi_heads.box_predictor.logit_bias"], torch.zeros(C))
    assert (out / "metrics.json").is_file()  # evaluated at the end, with the adjusted head


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "disalign"], "--loss disalign needs --from RUN"),
        (["--loss", "softmax", "--from", "FIRST"], "--from applies to --loss disalign only"),
        (["--loss", "disalign", "--from", "EMPTY"], "the first stage must have finished"),
        (
            ["--loss", "disalign", "--from", "FIRST", "--activation", "sigmoid"],
            "differs from the first stage's (gumbel",
        ),
        (["--loss", "disalign", "--from", "EQL"], "does not fit DisAlign's"),
    ],
)
def test_bad_second_stages_exit_2_and_write_nothing(
    first_stage, data_dir, tmp_path, extra, message
):
    empty = tmp_path / "empty"
    empty.mkdir()
    eql = tmp_path / "eql"
    if "EQL" in extra:
        result = runner.invoke(app, train_args(data_dir, eql, "--loss", "eql"))
        assert result.exit_code == 0, result.output
    names = {"FIRST": str(first_stage), "EMPTY": str(empty), "EQL": str(eql)}
    extra = [names.get(a, a) for a in extra]
    out = tmp_path / "never"
    result = runner.invoke(app, ["train", "--out", str(out), *extra, *FAST])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not out.exists()

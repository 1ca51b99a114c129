"""NorCal (model/calibration.py): against a float64 port of its authors' predict_probs and the
per-class reading for Sigmoid and Gumbel heads; in the heads before thresholding; from
``gumbel train`` and ``gumbel eval`` into files of their own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.model.calibration import NorCal, score_calibration

runner = CliRunner()
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


def authors_predict_probs(logits: np.ndarray, counts: np.ndarray, gamma: float) -> np.ndarray:
    """A float64 port of NorCal's CalibrationFastRCNNOutputLayers.predict_probs with its
    defaults (METHOD "gamma", WITH "exps", RENORM True): exp of the logits, the foreground
    columns times 1 / N_c^gamma, divided by the row sum; the foreground columns returned."""
    probs = np.exp(logits)
    probs[:, :-1] *= 1.0 / counts.reshape(1, -1) ** gamma
    probs /= probs.sum(axis=1, keepdims=True)
    return probs[:, :-1]


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 2.5])
def test_softmax_equals_the_authors_code(gamma):
    from gumbel_analysis.losses import build_loss

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 500, size=7).astype(np.float64)
    logits = rng.normal(0, 3, size=(50, 8))
    logits[:5, -1] += 8  # proposals the background dominates
    logits[5:10, 0] += 15  # and proposals one class takes nearly all of
    want = authors_predict_probs(logits, counts, gamma)
    probs = torch.softmax(torch.as_tensor(logits), dim=1)
    got = NorCal(counts, gamma)(probs[:, :7], probs[:, 7])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # float32 scores and background from the loss, as the heads give them: rounding only
    loss = build_loss("softmax", 7)
    z32 = torch.as_tensor(logits, dtype=torch.float32)
    got32 = NorCal(counts, gamma)(loss.scores(z32), loss.background_scores(z32))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5)


def test_seesaw_renormalises_with_its_objectness_background():
    from gumbel_analysis.losses import build_loss

    loss = build_loss("seesaw", 4)
    logits = torch.randn(20, 6) * 3
    scores, background = loss.scores(logits), loss.background_scores(logits)  # float32
    torch.testing.assert_close(scores.sum(1) + background, torch.ones(20))
    counts = np.array([1.0, 3.0, 30.0, 300.0])
    got = NorCal(counts, 0.8)(scores, background).numpy()
    # p(c | fg) p(fg) N_c^-gamma over the same plus p(bg), from the logits in float64
    z = logits.double().numpy()
    fg = np.exp(z[:, :4]) / np.exp(z[:, :4]).sum(1, keepdims=True)
    obj = np.exp(z[:, 4:]) / np.exp(z[:, 4:]).sum(1, keepdims=True)
    num = fg * obj[:, :1] * counts**-0.8
    np.testing.assert_allclose(got, num / (num.sum(1, keepdims=True) + obj[:, 1:]), rtol=1e-5)


def test_sigmoid_is_the_logit_shifted_by_gamma_log_n():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 1000, size=6).astype(np.float64)
    z = rng.normal(0, 4, size=(40, 6))
    gamma = 0.7
    got = NorCal(counts, gamma)(torch.sigmoid(torch.as_tensor(z)))
    want = 1.0 / (1.0 + np.exp(-(z - gamma * np.log(counts))))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)


def test_gumbel_odds_are_scaled_by_n_to_the_minus_gamma():
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 1000, size=6).astype(np.float64)
    z = rng.normal(0, 1.5, size=(40, 6))
    gamma = 1.3
    p = np.exp(-np.exp(-z))  # the Gumbel activation (Eq. 3 at sigma 1)
    got = NorCal(counts, gamma)(torch.as_tensor(p)).numpy()
    odds = p / -np.expm1(-np.exp(-z)) * counts**-gamma
    np.testing.assert_allclose(got, odds / (1.0 + odds), rtol=1e-9)


def test_gamma_zero_keeps_the_scores_and_rare_classes_gain_rank():
    counts = np.array([1.0, 10.0, 1000.0])
    scores = torch.tensor([[0.2, 0.3, 0.4], [0.01, 0.0, 0.9]], dtype=torch.float64)
    for background in (1.0 - scores.sum(1), None):
        torch.testing.assert_close(NorCal(counts, 0.0)(scores, background), scores)
        calibrated = NorCal(counts, 1.0)(scores, background)
        # the rarest class now outranks the most frequent one in the first row
        assert calibrated[0, 0] > calibrated[0, 2]
        assert calibrated[1, 1] == 0  # a zero score stays zero


def test_unseen_classes_count_as_one_image_and_bad_input_is_refused():
    calibrated = NorCal([0.0, 4.0], 1.0)(torch.tensor([[0.3, 0.3]]), torch.tensor([0.4]))
    assert torch.isfinite(calibrated).all()
    torch.testing.assert_close(calibrated, torch.tensor([[0.3 / 0.775, 0.075 / 0.775]]))
    with pytest.raises(ValueError, match="gamma"):
        NorCal([1.0], -0.1)
    with pytest.raises(ValueError, match=r"scores \[N, 2\]"):
        NorCal([1.0, 2.0], 1.0)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"background scores \[3\]"):
        NorCal([1.0, 2.0], 1.0)(torch.zeros(3, 2), torch.zeros(3, 1))


def test_the_heads_calibrate_before_the_score_threshold():
    from gumbel_analysis.losses import build_loss
    from gumbel_analysis.model import build_model

    loss = build_loss("sigmoid", 4)
    model = build_model("tiny", 4, loss).eval()
    heads = model.roi_heads
    heads.score_thresh = 0.3
    logits = torch.zeros(6, loss.num_outputs)  # every score 0.5
    regression = torch.zeros(6, 16)
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[20.0, 20.0, 40.0, 40.0]] * 3)]
    _, _, labels = heads.postprocess_detections(logits, regression, proposals, [(64, 64)])
    assert set(labels[0].tolist()) == {1, 2, 3, 4}
    # N = (1, 1, 1, 100) at gamma 0.5: the last class's 0.5 falls to 1/11, under the threshold
    calibration = NorCal([1.0, 1.0, 1.0, 100.0], 0.5)
    with score_calibration(model, calibration):
        _, scores, labels = heads.postprocess_detections(logits, regression, proposals, [(64, 64)])
    assert set(labels[0].tolist()) == {1, 2, 3}
    torch.testing.assert_close(scores[0], torch.full_like(scores[0], 0.5))  # N_c = 1: unchanged
    assert heads.score_calibration is None  # restored after the block
    assert not any("class_weight" in k for k in model.state_dict())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


@pytest.fixture(scope="module")
def norcal_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--loss", "softmax"]
    args += ["--max-iters", "2", "--epochs", "1", "--no-grad-log", *FAST]
    args += ["--calibration", "norcal", "--norcal-gamma", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_the_calibrated_evaluation_beside_its_own(norcal_run):
    own = json.loads((norcal_run / "metrics.json").read_text())
    calibrated = json.loads((norcal_run / "metrics.norcal-g0.5.json").read_text())
    assert "calibration" not in own
    assert calibrated["calibration"] == "norcal" and calibrated["norcal_gamma"] == 0.5
    config = json.loads((norcal_run / "config.json").read_text())
    assert config["calibration"] == "norcal" and config["norcal_gamma"] == 0.5
    own_results = json.loads((norcal_run / "results.json").read_text())
    cal_results = json.loads((norcal_run / "results.norcal-g0.5.json").read_text())
    # Softmax renormalised with the background at N_c >= 1: no score rises
    assert len(cal_results) <= len(own_results)


def test_eval_calibrates_into_its_own_files_and_repeats_the_run_unchanged(norcal_run):
    own = (norcal_run / "results.json").read_bytes()
    result = runner.invoke(
        app, ["eval", str(norcal_run), "--calibration", "norcal", "--norcal-gamma", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["norcal_gamma"] == 1.0
    assert (norcal_run / "results.norcal-g1.json").is_file()
    # without --calibration, eval repeats the run's own (uncalibrated) evaluation
    result = runner.invoke(app, ["eval", str(norcal_run), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert "calibration" not in json.loads(result.stdout)
    assert (norcal_run / "results.json").read_bytes() == own


@pytest.mark.parametrize(
    "args, message",
    [
        (["--calibration", "norcal"], "--calibration norcal needs --norcal-gamma"),
        (["--norcal-gamma", "1"], "--norcal-gamma applies to --calibration norcal only"),
        (["--calibration", "norcal", "--norcal-gamma", "-1"], "--norcal-gamma must be"),
    ],
)
def test_bad_calibration_options_exit_2_and_write_nothing(norcal_run, tmp_path, args, message):
    before = sorted(p.name for p in norcal_run.iterdir())
    result = runner.invoke(app, ["eval", str(norcal_run), *args])
    assert result.exit_code == 2 and message in result.stderr
    assert sorted(p.name for p in norcal_run.iterdir()) == before
    out = tmp_path / "never"
    result = runner.invoke(app, ["train", "--out", str(out), *args, *FAST])
    assert result.exit_code == 2 and message in result.stderr
    assert not out.exists()

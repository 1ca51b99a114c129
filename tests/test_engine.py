"""The training engine end to end on a small synthetic dataset: train, evaluate, resume, errors."""

import json
import shutil

import h5py
import lvis
import numpy as np
import pytest
import torch

from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.setup import make_loss
from gumbel_analysis.engine.train import train
from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.hooks import HookBase
from gumbel_analysis.losses import LVIS_V1_LAMBDA, LVIS_V1_TRAIN_IMAGES, lambda_from_groups
from gumbel_analysis.spec.config import TrainConfig, resolve

SPEC = SyntheticSpec(classes=6, train_images=24, val_images=6, size=64, seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", SPEC, progress=False)


def small_config(data_dir, out, **overrides):
    values = dict(
        data=str(data_dir),
        out=str(out),
        preset="tiny",
        batch_size=4,
        epochs=2,
        workers=0,
        warmup_iters=2,
        log_every=1,
        evaluate=False,
        grad_log=False,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_train_and_evaluate_write_a_complete_run(data_dir, tmp_path):
    out = tmp_path / "run"
    metrics = train(small_config(data_dir, out, max_iters=4, evaluate=True), progress=False)
    assert {"AP", "APr", "APc", "APf", "APb", "num_detections"} <= set(metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == "gumbel" and config["lr"] == pytest.approx(0.02 * 4 / 16)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in lines)
    assert lines[0]["lr"] < lines[-1]["lr"]  # linear warm-up
    # The results file is in the LVIS format: the official API reads it.
    gt = lvis.LVIS(str(data_dir / "annotations" / "lvis_v1_val.json"))
    results = json.loads((out / "results.json").read_text())
    assert len(results) == metrics["num_detections"] > 0
    lvis.LVISResults(gt, str(out / "results.json"))
    assert json.loads((out / "metrics.json").read_text())["AP"] == metrics["AP"]
    assert ckpt.load_checkpoint(out / "model_final.pt")["config"]["preset"] == "tiny"


class KillAt(HookBase):
    """Stands in for a SIGKILL: stops the run before iteration ``at + 1`` runs."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iteration == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("loss", ["gumbel", "gol"])
def test_resume_after_a_kill_ends_with_the_same_weights(data_dir, tmp_path, loss):
    # Gradient rows every 2 iterations: the kill at iteration 3 leaves one pending.
    opts = dict(loss=loss, batch_size=8, grad_log=True, grad_every=2)
    full = tmp_path / "full"
    train(small_config(data_dir, full, **opts), progress=False)
    cut = tmp_path / "cut"
    cfg = small_config(data_dir, cut, **opts)
    per_epoch = 24 // 8
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, extra_hooks=[KillAt(per_epoch)])  # after epoch 1's checkpoint
    assert ckpt.load_checkpoint(cut / "last.pt")["iteration"] == per_epoch
    assert ckpt.load_checkpoint(cut / "last.pt")["epoch"] == 1
    train(small_config(data_dir, cut, **opts), resume=True, progress=False)
    a = torch.load(full / "model_final.pt", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = [json.loads(line)["iteration"] for line in (cut / "metrics.jsonl").open()]
    assert logged == list(range(1, 2 * per_epoch + 1))  # no row lost or repeated
    with h5py.File(full / "grads.h5", "r") as f, h5py.File(cut / "grads.h5", "r") as g:
        assert f["iteration"][:].tolist() == g["iteration"][:].tolist() == [2, 4, 6]
        for name in ("positive_sum", "positive_count", "negative_sum", "negative_count"):
            np.testing.assert_array_equal(f[name][:], g[name][:])
        assert f["positive_count"][:].sum() > 0


def test_resume_refuses_a_corrupt_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt"):
        train(small_config(data_dir, out), resume=True, progress=False)


def test_a_used_run_folder_is_not_overwritten(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        train(small_config(data_dir, out), progress=False)


class PoisonWeights(HookBase):
    def before_step(self):
        if self.trainer.iteration == 2:
            with torch.no_grad():
                for p in self.trainer.model.roi_heads.box_predictor.parameters():
                    p.fill_(float("nan"))


def test_non_finite_loss_stops_naming_the_iteration(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite loss at iteration 3"):
        train(
            small_config(data_dir, out, loss="softmax"),
            progress=False,
            extra_hooks=[PoisonWeights()],
        )
    assert (out / "diverged.pt").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_lambda_from_groups_reproduces_the_lvis_default():
    counts = torch.tensor([3.0, 10, 50, 100, 101, 400], dtype=torch.float64)
    freq = (counts / LVIS_V1_TRAIN_IMAGES).numpy()
    assert lambda_from_groups(freq, ["r", "r", "c", "c", "f", "f"]) == pytest.approx(
        LVIS_V1_LAMBDA, rel=1e-12
    )
    with pytest.raises(ValueError, match="overlap"):
        lambda_from_groups(freq, ["r", "f", "c", "c", "f", "f"])
    # Through make_loss the data's problem becomes one line for the command line.
    with pytest.raises(InputError, match="--loss gol: cannot derive lambda"):
        make_loss(TrainConfig(loss="gol"), freq, ["r", "f", "c", "c", "f", "f"])


def test_config_resolution_scales_the_learning_rate():
    cfg = resolve(TrainConfig(preset="r50-fpn", schedule="2x"), world_size=8)
    assert cfg.epochs == 24 and cfg.lr_steps == (16, 22)
    assert cfg.lr == pytest.approx(0.02)  # 2 images x 8 processes = the paper's 16
    with pytest.raises(InputError):
        resolve(TrainConfig(preset="nope"))
    with pytest.raises(InputError, match="unknown configuration keys"):
        TrainConfig.from_dict({"epochz": 3})


def test_missing_data_folder_and_annotations(tmp_path, data_dir):
    with pytest.raises(InputError, match="data folder not found"):
        train(small_config(tmp_path / "nope", tmp_path / "run"), progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    (broken / "annotations" / "lvis_v1_val.json").unlink()
    with pytest.raises(InputError, match="annotation file not found"):
        train(small_config(broken, tmp_path / "run2"), progress=False)


def test_flush_denormals_zeroes_denormals_only_inside_and_nests():
    from gumbel_analysis.engine.setup import flush_denormals

    denormal = torch.tensor([1e-39, 1e-30])  # float32: the first is denormal, the second normal

    def product():
        return (denormal * 1.0).tolist()

    assert product()[0] > 0
    with flush_denormals():
        with flush_denormals():
            assert product()[0] == 0
        assert product()[0] == 0  # the outer block still flushes
        assert product()[1] == pytest.approx(1e-30)
    assert product()[0] > 0


class RecordFirstStep(HookBase):
    """The dtypes the model computed in and the losses of the first step."""

    def before_train(self):
        model = self.trainer.model
        self.dtypes = {}

        def record(module, inputs, output):
            self.dtypes.setdefault("box_head", output.dtype)

        model.roi_heads.box_head.register_forward_hook(record)
        self.channels_last = model.backbone.body.conv1.weight.is_contiguous(
            memory_format=torch.channels_last
        )

    def after_step(self):
        if self.trainer.iteration == 1:
            self.losses = dict(self.trainer.storage.latest())


@pytest.mark.skipif(
    not __import__("gumbel_analysis.engine.setup").engine.setup.cpu_supports_bf16(),
    reason="this CPU has no bfloat16 instructions",
)
def test_amp_on_the_cpu_trains_in_bfloat16_close_to_float32(data_dir, tmp_path):
    runs = {}
    for amp in (False, True):
        hook = RecordFirstStep()
        cfg = small_config(data_dir, tmp_path / f"amp-{amp}", max_iters=1, amp=amp)
        train(cfg, progress=False, extra_hooks=[hook])
        runs[amp] = hook
    assert runs[False].dtypes["box_head"] == torch.float32 and not runs[False].channels_last
    assert runs[True].dtypes["box_head"] == torch.bfloat16 and runs[True].channels_last
    # Same weights, same batch, same anchors sampled: bfloat16 (8 mantissa bits) moves the
    # losses over fixed samples by well under 1%, and by more than float32 rounding would. (The
    # box and mask losses are over the proposals the RPN's rounding selects: not comparable.)
    for key in ("loss_classifier", "loss_objectness"):
        fp32, bf16 = runs[False].losses[key], runs[True].losses[key]
        assert bf16 == pytest.approx(fp32, rel=0.01) and bf16 != pytest.approx(fp32, rel=1e-7)
    assert json.loads((tmp_path / "amp-True" / "config.json").read_text())["amp"] is True


def test_amp_on_a_cpu_without_bfloat16_is_one_line_and_writes_nothing(
    data_dir, tmp_path, monkeypatch
):
    from gumbel_analysis.engine import setup

    monkeypatch.setattr(setup, "cpu_supports_bf16", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"^--amp: this CPU has no bfloat16"):
        train(small_config(data_dir, out, amp=True), progress=False)
    assert not out.exists()

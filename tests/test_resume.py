"""Recoverable, exactly resumable runs: a kill at any moment is continued to the same weights."""

import json

import h5py
import numpy as np
import pytest
import torch

from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.train import train
from gumbel_analysis.errors import InputError
from gumbel_analysis.hooks import HookBase
from gumbel_analysis.spec.config import TrainConfig

SPEC = SyntheticSpec(classes=6, train_images=24, val_images=6, size=64, seed=1)

#: Losses the mid-epoch resume is checked on; a loss with running statistics (e.g. eqlv2) is
#: one more name here.
RESUME_LOSSES = [
    "gumbel", "gol", "eqlv2", "seesaw", "loce", "loce+mfs", "cascade/eqlv2", "htc/seesaw"
]  # fmt: skip
#: A RESUME_LOSSES name -> the loss and the other fields of its run.
RESUME_OPTIONS = {
    "loce+mfs": ("loce", {"loss_options": {"loce_mfs": True, "loce_mfs_queue": 20}}),
    "cascade/eqlv2": ("eqlv2", {"preset": "cascade-tiny"}),
    "htc/seesaw": ("seesaw", {"preset": "htc-tiny"}),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", SPEC, progress=False)


def config(data_dir, out, **overrides):
    values = dict(
        data=str(data_dir),
        out=str(out),
        batch_size=8,  # 3 iterations per epoch
        epochs=2,
        workers=0,
        warmup_iters=2,
        log_every=1,
        evaluate=False,
        grad_log=True,
        grad_every=2,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


class KillAt(HookBase):
    """Stands in for a SIGKILL: stops the run before iteration ``at + 1`` runs."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iteration == self.at:
            raise KeyboardInterrupt


def same_state(a, b) -> bool:
    """Tensors equal bit for bit; a module's extra state (a dict of them) entry by entry."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def assert_same_run(full, cut):
    a = torch.load(full / "model_final.pt", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert same_state(a[key], b[key]), key
    with h5py.File(full / "grads.h5", "r") as f, h5py.File(cut / "grads.h5", "r") as g:
        assert f["iteration"][:].tolist() == g["iteration"][:].tolist()
        for name in ("positive_sum", "positive_count", "negative_sum", "negative_count"):
            np.testing.assert_array_equal(f[name][:], g[name][:])
    full_log = [json.loads(line) for line in (full / "metrics.jsonl").open()]
    cut_log = [json.loads(line) for line in (cut / "metrics.jsonl").open()]
    assert [r["iteration"] for r in cut_log] == [r["iteration"] for r in full_log]
    assert [r["loss"] for r in cut_log] == [r["loss"] for r in full_log]


#: Data-loader workers are checked on the plain losses; the models and memories on one.
RESUME_CASES = [
    (loss, w) for loss in RESUME_LOSSES for w in ((0,) if loss in RESUME_OPTIONS else (0, 2))
]


@pytest.mark.parametrize(("loss", "workers"), RESUME_CASES)
def test_resume_mid_epoch_is_exact(data_dir, tmp_path, loss, workers):
    # Checkpoints every 2 iterations; the kill before iteration 6 leaves the one at iteration 4,
    # one step into the second epoch (with a flip-heavy augmentation to make any drift show).
    name, fields = RESUME_OPTIONS.get(loss, (loss, {}))
    options = fields.get("loss_options", {})
    opts = dict(loss=name, workers=workers, checkpoint_every=2, hflip=0.5, **fields)
    full = tmp_path / "full"
    train(config(data_dir, full, **opts), progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, cut, **opts), progress=False, extra_hooks=[KillAt(5)])
    state = ckpt.load_checkpoint(cut / "last.pt")
    assert (state["iteration"], state["epoch"], state["epoch_iteration"]) == (4, 1, 1)
    assert state["data"]["position"] == 8
    train(config(data_dir, cut, **opts), resume=True, progress=False)
    assert_same_run(full, cut)
    statistics = {"eqlv2": "pos_grad", "seesaw": "cum_samples", "loce": "mean_score"}.get(name)
    if options.get("loce_mfs"):  # the memory travelled (equal above) and was filled
        model = torch.load(cut / "model_final.pt", weights_only=False)["model"]
        memory = model["roi_heads.feature_memory._extra_state"]
        assert memory["steps"] == 6 and len(memory["features"]) > 0
    if statistics:  # running statistics travel in the checkpoint (equal above), and were used
        model = torch.load(cut / "model_final.pt", weights_only=False)["model"]
        values = model[f"roi_heads.classification_loss.{statistics}"]
        moved = values != (0.01 if name == "loce" else 0)  # LOCE's mean scores start at 0.01
        assert bool(moved.any())


def test_resume_with_other_workers_is_still_exact(data_dir, tmp_path):
    # Workers are safe to change on resume: flips are seeded per sample, not per worker.
    full = tmp_path / "full"
    train(config(data_dir, full, checkpoint_every=2), progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, cut, checkpoint_every=2), progress=False, extra_hooks=[KillAt(3)])
    train(
        config(data_dir, cut, checkpoint_every=2),
        resume=True,
        given={"workers": 2},
        progress=False,
    )
    assert json.loads((cut / "config.json").read_text())["workers"] == 2
    assert_same_run(full, cut)


class KillWhileSaving(HookBase):
    """A kill while the first checkpoint is written: a temp file is left, no last.pt."""

    def after_step(self):
        t = self.trainer
        (t.run.root / ".last.pt.abcd1234.tmp.pt").write_bytes(b"")
        raise KeyboardInterrupt


def test_a_kill_during_the_first_checkpoint_is_recoverable(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, out, max_iters=2), progress=False, extra_hooks=[KillWhileSaving()])
    assert not (out / "last.pt").exists() and (out / "config.json").exists()
    # --resume without a checkpoint starts from iteration 0 with the saved config ...
    train(config(data_dir, out, max_iters=2), resume=True, progress=False)
    assert ckpt.load_checkpoint(out / "last.pt")["iteration"] == 2
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # ... and the temp file is gone
    lines = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").open()]
    assert lines == [1, 2]


def test_stale_temp_files_alone_do_not_block_a_plain_run(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.x1y2.tmp.pt").write_bytes(b"")
    train(config(data_dir, out, max_iters=1, grad_log=False), progress=False)
    assert (out / "last.pt").is_file() and not (out / ".last.pt.x1y2.tmp.pt").exists()


class FailAt(HookBase):
    def before_step(self):
        if self.trainer.iteration == 1:
            raise InputError("cannot read image x.png (image 7): broken")


def test_a_failure_before_the_first_checkpoint_leaves_no_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError):
        train(config(data_dir, out), progress=False, extra_hooks=[FailAt()])
    assert not out.exists()
    train(config(data_dir, out, max_iters=1, grad_log=False), progress=False)  # a plain rerun


def test_resume_refuses_changed_options_and_lists_them(data_dir, tmp_path):
    out = tmp_path / "run"
    train(config(data_dir, out, max_iters=1, grad_log=False), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match=r"--lr 0\.5 \(saved: 0\.02\); --loss sigmoid"):
        train(
            config(data_dir, out),
            resume=True,
            given={"base_lr": 0.5, "loss": "sigmoid", "workers": 0},
            progress=False,
        )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # A safe option is applied: a larger --max-iters continues the run.
    train(config(data_dir, out), resume=True, given={"max_iters": 2}, progress=False)
    assert ckpt.load_checkpoint(out / "last.pt")["iteration"] == 2


def test_a_full_disk_while_checkpointing_names_the_path(tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"last\.pt") as info:
        ckpt.save_checkpoint(tmp_path / "last.pt", {"x": 1})
    assert info.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_real_sigkill_at_any_moment_resumes_to_the_same_weights(data_dir, tmp_path):
    # A real SIGKILL of `gumbel train` (two loader workers, a checkpoint every iteration) once
    # its second checkpoint exists, wherever it is then; --resume ends with the weights of an
    # uninterrupted run.
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--data", str(data_dir), "--batch-size", "8", "--epochs", "3", "--workers", "2"]
    args += ["--device", "cpu", "--no-progress", "--no-eval", "--checkpoint-every", "1"]
    # Every run in its own process: torch's thread count (which other tests in this process
    # may have changed) decides the order of float reductions, so all three must share it.
    gumbel = [sys.executable, "-m", "gumbel_analysis", "train"]
    full = tmp_path / "full"
    subprocess.run([*gumbel, *args, "--out", str(full)], check=True, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*gumbel, *args, "--out", str(cut)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, seen, last = time.monotonic() + 120, set(), cut / "last.pt"
    while time.monotonic() < deadline and proc.poll() is None:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp not in seen:  # a new checkpoint (each one is renamed in)
            seen.add(stamp)
            if len(seen) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)  # the workers too
                break
        time.sleep(0.01)
    proc.wait()
    killed_at = ckpt.load_checkpoint(cut / "last.pt")["iteration"]
    assert proc.returncode == -signal.SIGKILL and killed_at < 9, (proc.returncode, killed_at)
    resumed = subprocess.run(
        [*gumbel, "--resume", "--out", str(cut), "--no-progress"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(full / "model_final.pt", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), (key, killed_at)


def test_a_second_stage_resumes_mid_epoch_exactly(data_dir, tmp_path):
    # DisAlign from a 1-epoch Softmax run: its 2 epochs of 3 iterations, killed before the 6th.
    first = tmp_path / "first"
    train(config(data_dir, first, loss="softmax", epochs=1, grad_log=False), progress=False)
    opts = dict(loss="disalign", from_run=str(first), epochs=None, checkpoint_every=2)
    full = tmp_path / "full"
    train(config(data_dir, full, **opts), progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, cut, **opts), progress=False, extra_hooks=[KillAt(5)])
    assert ckpt.load_checkpoint(cut / "last.pt")["iteration"] == 4
    train(config(data_dir, cut, **opts), resume=True, progress=False)
    assert_same_run(full, cut)
    second = torch.load(full / "model_final.pt", weights_only=False)["model"]
    first_model = torch.load(first / "model_final.pt", weights_only=False)["model"]
    fresh = set(second) - set(first_model)  # DisAlign's alignment: what the stage trained
    assert fresh and all(k.startswith("roi_heads.box_predictor.") for k in fresh), fresh

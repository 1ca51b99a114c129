"""Inference at scale: DataLoader prediction without targets, torchrun shards merged by rank 0,
the score threshold and detections per image as options."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data import lvis_io
from gumbel_analysis.data.dataset import LVISDetection
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine import inference
from gumbel_analysis.engine.setup import data_paths, make_loss
from gumbel_analysis.model import build_model
from gumbel_analysis.spec.config import TrainConfig, resolve
from gumbel_analysis.spec.layout import RunLayout

runner = CliRunner()
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=5, size=64, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


def _model_and_config(data_dir):
    cfg = TrainConfig(data=str(data_dir), loss="sigmoid", workers=0, batch_size=2, device="cpu")
    cfg = resolve(cfg)
    train = lvis_io.load_lvis_json(data_paths(cfg.data).train_ann)
    loss = make_loss(cfg, lvis_io.class_frequency(train), lvis_io.frequency_groups(train))
    torch.manual_seed(1)
    return build_model(cfg.preset, loss.num_classes, loss).eval(), cfg


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A run folder holding a randomly initialised tiny model (no training needed here)."""
    model, cfg = _model_and_config(data_dir)
    run = tmp_path_factory.mktemp("run")
    ckpt.save_checkpoint(
        RunLayout(run).final, {"model": model.state_dict(), "config": cfg.to_dict()}
    )
    return run


@pytest.fixture(scope="module")
def val_set(data_dir):
    paths = data_paths(str(data_dir))
    return LVISDetection(paths.val_ann, paths.image_root, train=False)


def by_image(entries):
    out = defaultdict(list)
    for e in entries:
        out[e["image_id"]].append(e)
    return out


def test_shards_cover_every_image_once_as_one_process_batches():
    one = inference.shard_batches(7, 2)
    assert one == [[0, 1], [2, 3], [4, 5], [6]]
    shards = [inference.shard_batches(7, 2, 3, r) for r in range(3)]
    assert shards == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    assert inference.shard_batches(1, 4, 2, 1) == []  # a rank may have nothing to predict


def test_prediction_does_not_decode_ground_truth_masks(data_dir, val_set, tmp_path, monkeypatch):
    import gumbel_analysis.data.dataset as dataset_module

    calls = []

    def no_decoding(*args):
        calls.append(args)
        raise AssertionError("prediction decoded a ground-truth mask")

    monkeypatch.setattr(dataset_module, "_decode", no_decoding)
    with pytest.raises(AssertionError):
        val_set[0]  # a training sample does decode its masks: the patch is in force
    calls.clear()
    model, cfg = _model_and_config(data_dir)
    metrics = inference.evaluate_run(model, val_set, torch.device("cpu"), RunLayout(tmp_path), cfg)
    assert calls == []
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == metrics["num_detections"] > 0
    assert {e["image_id"] for e in results} <= set(val_set.image_ids)
    assert "segmentation" in results[0] and "APr" in metrics
    # the run's settings are recorded with its metrics; no part file is left behind
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["score_threshold"] == 1e-4 and saved["max_dets"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "results.json"]


def test_score_threshold_and_max_dets_take_effect(data_dir, val_set):
    model, _ = _model_and_config(data_dir)
    cpu = torch.device("cpu")

    def predict(threshold, max_dets):
        with inference.prediction_limits(model, threshold, max_dets):
            return by_image(inference.predict(model, val_set, cpu, 2, [0, 1], progress=False))

    full = predict(0.0, 10_000)
    assert sum(map(len, full.values())) > 3 * len(full)  # enough detections to cut
    scores = sorted(e["score"] for entries in full.values() for e in entries)
    threshold = scores[len(scores) // 2]
    # NMS keeps a box unless a higher-scoring one suppresses it: dropping the low scores first
    # leaves exactly the full run's detections that score above the threshold
    above = predict(threshold, 10_000)
    for image_id, entries in full.items():
        assert above.get(image_id, []) == [e for e in entries if e["score"] > threshold]
    # the cap keeps each image's highest scores (torchvision's output is by score)
    capped = predict(0.0, 3)
    for image_id, entries in full.items():
        assert capped[image_id] == entries[:3]
    assert model.roi_heads.score_thresh == 1e-4 and model.roi_heads.detections_per_img == 300


def test_eval_options_reach_the_model_and_the_metrics(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["eval", str(run_dir), "--out", str(out), "--device", "cpu", "--no-progress", "--json"]
    result = runner.invoke(app, [*args, "--max-dets", "2", "--score-threshold", "0.001"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["max_dets"] == 2 and metrics["score_threshold"] == 0.001
    results = json.loads((out / "results.json").read_text())
    assert results and all(e["score"] > 0.001 for e in results)
    assert max(len(v) for v in by_image(results).values()) <= 2
    assert metrics["num_detections"] == len(results)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--score-threshold", "1.5"], "--score-threshold"),
        (["--score-threshold", "-0.1"], "--score-threshold"),
        (["--score-threshold", "nan"], "--score-threshold"),
        (["--max-dets", "0"], "--max-dets"),
        (["--workers", "-1"], "--workers"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_inference_options_are_one_line_and_write_nothing(run_dir, args, fragment):
    before = sorted(p.name for p in run_dir.iterdir())
    result = runner.invoke(app, ["eval", str(run_dir), "--device", "cpu", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_run_options_on_a_results_file_are_refused(tmp_path):
    results = tmp_path / "r.json"
    results.write_text("[]")
    for option, value in (("--score-threshold", "0.1"), ("--workers", "2")):
        result = runner.invoke(app, ["eval", str(results), "--gt", str(results), option, value])
        assert result.exit_code == 2 and option in result.stderr, result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--score-threshold", "1"], "--score-threshold"), (["--max-dets", "0"], "--max-dets")],
)
def test_train_refuses_bad_inference_options(data_dir, tmp_path, args, fragment):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--data", str(data_dir), "--out", str(out), "--device", "cpu", *args]
    )
    assert result.exit_code == 2 and fragment in result.stderr, result.output
    assert not out.exists()


def test_lvis_defaults_per_preset():
    for preset in ("tiny", "r50-fpn", "r101-fpn"):
        cfg = resolve(TrainConfig(preset=preset))
        assert (cfg.score_threshold, cfg.max_dets) == (1e-4, 300)
    cfg = resolve(TrainConfig(preset="r50-fpn", score_threshold=0.05, max_dets=100))
    assert (cfg.score_threshold, cfg.max_dets) == (0.05, 100)


def test_a_truncated_part_is_an_error_and_parts_are_removed(tmp_path):
    from gumbel_analysis.errors import InputError

    results = tmp_path / "results.json"
    inference.part_path(results, 0).write_text('[{"a":1}]\n[]\n')
    inference.part_path(results, 1).write_text("")  # rank 1 lost its image
    with pytest.raises(InputError, match="incomplete"):
        inference.merge_parts(results, 3, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    inference.part_path(results, 0).write_text('[{"a":1}]\n[]\n')
    inference.part_path(results, 1).write_text('[{"b":2},{"c":3}]\n')
    inference.merge_parts(results, 3, 1, 2)
    assert results.read_text() == '[{"a":1},{"b":2},{"c":3}]'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _eval_command(run_dir, out):
    return ["-m", "gumbel_analysis", "eval", str(run_dir), "--out", str(out), "--device", "cpu"]


@pytest.mark.slow
def test_two_process_gloo_inference_equals_one_process(run_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = ["--no-progress", "--json", "--batch-size", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    single = subprocess.run(
        [sys.executable, *_eval_command(run_dir, one), *options, "--workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    double = subprocess.run(
        [*torchrun, "2", *_eval_command(run_dir, two), *options, "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_one == metrics_two and metrics_one["num_detections"] > 0
    assert json.loads(single.stdout) == metrics_one == json.loads(double.stdout)  # rank 0 alone
    entries_one = json.loads((one / "results.json").read_text())
    entries_two = json.loads((two / "results.json").read_text())
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, entries_one)) == sorted(map(key, entries_two))
    # merged in dataset order: the very file one process writes
    assert (one / "results.json").read_bytes() == (two / "results.json").read_bytes()
    assert sorted(p.name for p in two.iterdir()) == ["metrics.json", "results.json"]


@pytest.mark.slow
def test_two_process_training_evaluates_the_model_it_saves(data_dir, tmp_path):
    """After DDP training each rank's BatchNorm statistics differ; the end-of-training
    evaluation (both ranks predicting) must be that of the saved model, as one process sees it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run, again = tmp_path / "run", tmp_path / "again"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    train = [*torchrun, "2", "-m", "gumbel_analysis", "train", "--data", str(data_dir)]
    train += ["--out", str(run), "--max-iters", "1", "--batch-size", "2", "--loss", "sigmoid"]
    train += ["--workers", "1", "--device", "cpu", "--no-progress", "--no-grad-log"]
    done = subprocess.run(train, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again.mkdir()
    command = [sys.executable, *_eval_command(run, again), "--no-progress", "--workers", "0"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text()) == json.loads(
        (again / "metrics.json").read_text()
    )
    assert (run / "results.json").read_bytes() == (again / "results.json").read_bytes()

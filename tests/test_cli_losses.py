"""`gumbel train` with every loss and activation: options from the registry, refused combinations,
the resolved config, and a short run of each method x activation (slow)."""

import json
import math

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.losses import available_losses, loss_entry

runner = CliRunner()
# 7 classes so that every r/c/f group exists and lambda can be derived.
SPEC = SyntheticSpec(classes=7, train_images=20, val_images=10, size=64, seed=3)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


def assert_refused(args, fragment, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *args, "--out", str(out), *FAST])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--loss", "seesaw", "--activation", "gumbel"], "--activation gumbel does not apply"),
        (["--loss", "gol", "--activation", "sigmoid"], "--loss gol fixes it"),
        (["--loss", "gumbel", "--eqlv2-gamma", "3"], "--eqlv2-gamma does not apply"),
        (["--loss", "eql", "--variant", "equation"], "--variant does not apply to --loss eql"),
        (["--loss", "acsl", "--acsl-xi", "1.5"], "--acsl-xi must be a number in (0, 1)"),
        (["--loss", "federated", "--fed-classes", "0"], "--fed-classes must be an integer"),
        (["--loss", "gol", "--lambda", "nan"], "--lambda must be a number in (0, 1]"),
        (
            ["--loss", "eqlv2", "--activation", "gumbel", "--temperature", "-1"],
            "--temperature must",
        ),
        (["--loss", "eqlv2", "--temperature", "0.9"], "--temperature does not apply"),
        (["--loss", "gumbel", "--loce-mfs"], "--loce-mfs does not apply to --loss gumbel"),
        (["--loss", "loce", "--loce-mfs-queue", "0"], "--loce-mfs-queue must be an integer"),
        (["--loss", "loce", "--loce-mfs-classes", "1.5"], "--loce-mfs-classes"),
    ],
)
def test_loss_options_that_do_not_apply_are_one_line(args, fragment, tmp_path):
    assert_refused(args, fragment, tmp_path)


def test_config_file_loss_options_are_checked_too(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"loss": "eqlv2", "loss_options": {"acsl_xi": 0.5}}))
    assert_refused(["--config", str(config)], "--acsl-xi does not apply", tmp_path)


def test_resolved_config_records_activation_and_every_loss_option(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--loss", "droploss"]
    args += ["--activation", "gumbel", "--temperature", "0.9", "--max-iters", "1", "--no-eval"]
    result = runner.invoke(app, [*args, *FAST])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["activation"] == "gumbel"
    options = cfg["loss_options"]
    assert options["temperature"] == 0.9 and options["gumbel_mode"] == "stable"
    assert options["variant"] == "reference"  # DropLoss's default: its authors' code
    assert 0 < options["lambda_"] < 1  # derived from the data's groups, then recorded


def test_legacy_config_keys_still_read():
    from gumbel_analysis.spec.config import TrainConfig

    cfg = TrainConfig.from_dict({"loss": "gol", "temperature": 1.1, "drop_variant": "reference"})
    assert cfg.loss_options == {"temperature": 1.1, "variant": "reference"}
    old_run = {"loss": "sigmoid", "temperature": 1.0, "gumbel_mode": "stable", "lambda_": None}
    assert TrainConfig.from_dict(old_run).loss_options == {}


LOSS_ACTIVATIONS = [
    (name, activation)
    for name in available_losses()
    if not loss_entry(name).fixed  # the aliases are their methods with one activation
    and name != "disalign"  # a second stage: trained from a first one in test_disalign.py
    for activation in loss_entry(name).activations
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "activation"), LOSS_ACTIVATIONS)
def test_every_method_and_activation_trains_without_nan(name, activation, data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--loss", name]
    args += ["--activation", activation, "--epochs", "1", "--no-eval", "--grad-every", "2"]
    result = runner.invoke(app, [*args, *FAST])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    assert (out / "grads.h5").is_file()


def test_a_boolean_loss_option_is_a_switch_recorded_in_the_config(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--loss", "loce", "--loce-mfs", "--max-iters", "1"]
    result = runner.invoke(app, [*args, "--no-eval", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    options = json.loads((out / "config.json").read_text())["loss_options"]
    assert options["loce_mfs"] is True and options["loce_mfs_queue"] == 80
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--no-loce-mfs" in help_text

"""`gumbel train` and `gumbel eval` through the command line: outputs, bad input, DDP."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic

runner = CliRunner()
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


def assert_one_line_error(result, fragment, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.output


def test_train_then_eval_json(data_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--max-iters",
            "2",
            "--loss",
            "sigmoid",
            "--json",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["run"] == str(out) and "APr" in trained
    result = runner.invoke(app, ["eval", str(out), "--json", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["AP"] == trained["AP"] and evaluated["APb"] == trained["APb"]
    table = runner.invoke(app, ["eval", str(out / "model_final.pt"), "--no-progress"])
    assert table.exit_code == 0 and "APr" in table.stdout


def corrupt(data_dir, tmp_path, edit):
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    path = broken / "annotations" / "lvis_v1_train.json"
    data = json.loads(path.read_text())
    edit(broken, data)
    path.write_text(json.dumps(data))
    return broken


def drop_image(root, data):
    (root / "images" / data["images"][0]["file_name"]).unlink()


def unknown_category(root, data):
    data["annotations"][0]["category_id"] = 999


def not_lvis(root, data):
    data.clear()
    data["hello"] = "world"


def empty(root, data):
    data["images"], data["annotations"] = [], []


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (drop_image, "image file not found"),
        (unknown_category, "unknown category id 999"),
        (not_lvis, "is not LVIS"),
        (empty, "no images"),
    ],
)
def test_train_bad_data_is_one_line(data_dir, tmp_path, edit, fragment):
    broken = corrupt(data_dir, tmp_path, edit)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(broken), "--out", str(out), *FAST])
    assert_one_line_error(result, fragment)
    assert not (out / "last.pt").exists()


def test_resume_with_a_corrupt_checkpoint_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x00" * 100)
    result = runner.invoke(app, ["train", "--resume", "--out", str(out), *FAST])
    assert_one_line_error(result, "corrupt")


def test_eval_of_a_missing_run_is_one_line(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing.pt")])
    assert_one_line_error(result, "not found")


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "port"), [("tiny", 29517), ("htc-tiny", 29518)])
def test_two_process_gloo_ddp(data_dir, tmp_path, preset, port):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(port),
            "-m",
            "gumbel_analysis",
            "train",
            "--preset",
            preset,
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--max-iters",
            "3",
            "--no-eval",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert config["lr"] == pytest.approx(0.02 * 2 * 2 / 16)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows][-1] == 3
    assert (out / "model_final.pt").is_file()


def test_rfs_records_the_threshold_it_derived_from_the_data(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--sampler", "rfs"]
    result = runner.invoke(app, [*args, "--max-iters", "1", "--no-eval", "--no-grad-log", *FAST])
    assert result.exit_code == 0, result.output
    train = json.loads((data_dir / "annotations" / "lvis_v1_train.json").read_text())
    n = len(train["images"])
    low = max(c["image_count"] for c in train["categories"] if c["frequency"] in "rc")
    high = min(c["image_count"] for c in train["categories"] if c["frequency"] == "f")
    saved = json.loads((out / "config.json").read_text())
    assert saved["rfs_threshold"] == pytest.approx((low + high) / 2 / n, rel=1e-12)
    # --resume with the saved, derived threshold is the same configuration
    resumed = runner.invoke(app, [*args, "--resume", "--max-iters", "2", "--no-eval", *FAST])
    assert resumed.exit_code == 0, resumed.output

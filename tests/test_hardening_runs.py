"""Issue 22's cases on training, resuming, sweeping and reproducing: nothing a later command does
changes a finished run, and every refusal leaves the disk as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from test_hardening import FAST, data_dir, refused, run_dir, runner, snapshot  # noqa: F401
from test_sweep import _fake_run

from gumbel_analysis.cli.app import app
from gumbel_analysis.experiments import reproduce
from gumbel_analysis.experiments import sweep as sweep_lib
from gumbel_analysis.io import make_temp_dir, remove_leftovers
from gumbel_analysis.spec.layout import RunLayout


@pytest.fixture(scope="module")
def sigmoid_run(data_dir, tmp_path_factory):  # noqa: F811 - the shared fixture
    out = tmp_path_factory.mktemp("s") / "run"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--loss", "sigmoid"]
    result = runner.invoke(app, [*args, "--max-iters", "2", "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    return out


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "copy")


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, run_dir, sigmoid_run):  # noqa: F811
    """A gumbel run folder holding a sigmoid run's last.pt: refused naming both files, where it
    used to rewrite config.json with the checkpoint's config."""
    run = _copy(run_dir, tmp_path)
    shutil.copy(RunLayout(sigmoid_run).last, RunLayout(run).last)
    line = refused(
        ["train", "--resume", "--out", run, "--max-iters", "3"], "is not a checkpoint", run
    )
    assert str(RunLayout(run).last) in line and str(RunLayout(run).config) in line
    assert "'sigmoid' in the checkpoint, 'gumbel' in the config" in line


def test_resume_refuses_a_corrupt_config_beside_a_checkpoint(tmp_path, run_dir):  # noqa: F811
    run = _copy(run_dir, tmp_path)
    RunLayout(run).config.write_text('{"loss": "gumb')
    refused(["train", "--resume", "--out", run, "--max-iters", "3"], "is corrupt", run)
    RunLayout(run).config.write_text("[1, 2]")  # valid JSON, not a config
    refused(["train", "--resume", "--out", run, "--max-iters", "3"], "is corrupt", run)


def test_a_checkpoint_resumes_with_its_own_config_json(tmp_path, run_dir):  # noqa: F811
    """The check above accepts the folder's own checkpoint, also after a safe option changed."""
    run = _copy(run_dir, tmp_path)
    args = ["train", "--resume", "--out", str(run), "--max-iters", "3", *FAST]
    result = runner.invoke(app, [*args, "--no-eval"])
    assert result.exit_code == 0, result.output
    saved = torch.load(RunLayout(run).last, weights_only=False)["config"]
    assert saved["max_iters"] == 3 == json.loads(RunLayout(run).config.read_text())["max_iters"]


@pytest.mark.parametrize("option", ["--out", "--data"])
def test_an_empty_path_is_refused(tmp_path, data_dir, option, monkeypatch):  # noqa: F811
    """``--out ""`` trained into the current folder; ``--data ""`` read it as the data."""
    monkeypatch.chdir(tmp_path)
    given = {"--out": str(tmp_path / "run"), "--data": str(data_dir), option: ""}
    args = ["train", "--out", given["--out"], "--data", given["--data"], *FAST]
    refused(args, f"{option} must be a non-empty string, got ''")


def test_a_relative_data_folder_is_recorded_resolved(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """So that the run can be evaluated (or resumed) from any other folder."""
    monkeypatch.chdir(data_dir.parent)
    out = tmp_path / "run"
    args = ["train", "--data", data_dir.name, "--out", str(out), "--max-iters", "1", "--no-eval"]
    result = runner.invoke(app, [*args, "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads(RunLayout(out).config.read_text())["data"] == str(data_dir.resolve())


def test_a_sweep_checks_before_it_removes_anything(tmp_path):
    """A run folder without a checkpoint that holds a folder named like a temp file: the sweep
    used to delete config.json, grads.h5 and metrics.jsonl, then fail on the folder."""
    base = {"loss": "gumbel", "max_iters": 2}
    run = _fake_run(tmp_path / "t1-s0", temperature=1.0, seed=0, **base)
    for name in ("metrics.jsonl", "grads.h5"):
        (run / name).write_text("x")
    (run / ".last.pt.abcd.tmp.pt").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(Exception, match=r"\.last\.pt\.abcd\.tmp\.pt"):
        sweep_lib.plan_sweep(base, [1.0], 1, 0, tmp_path)
    assert snapshot(tmp_path) == before
    (run / ".last.pt.abcd.tmp.pt").rmdir()
    (plan,) = sweep_lib.plan_sweep(base, [1.0], 1, 0, tmp_path)
    assert plan.action == "restart"  # its own files only: a restart removes them


def test_sweep_and_reproduce_refuse_cuda_without_writing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for args in (
        ["sweep", "--out", tmp_path / "s", "-t", "1", "--device", "cuda"],
        ["reproduce", "--out", tmp_path / "r", "--quick", "--device", "cuda"],
    ):
        refused(args, "--device cuda was asked for but CUDA is not available", tmp_path)
    assert not any(tmp_path.iterdir())


def test_amp_without_bfloat16_cpu_is_refused_without_writing(tmp_path, monkeypatch, data_dir):  # noqa: F811
    from gumbel_analysis.engine import setup

    monkeypatch.setattr(setup, "cpu_supports_bf16", lambda: False)
    message = "--amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX)"
    for args in (
        ["train", "--data", data_dir, "--out", tmp_path / "t", "--amp", "--device", "cpu"],
        ["sweep", "--out", tmp_path / "s", "-t", "1", "--amp", "--device", "cpu"],
        ["reproduce", "--out", tmp_path / "r", "--quick", "--amp"],
    ):
        refused([str(a) for a in args], message, tmp_path)
    assert not any(tmp_path.iterdir())


def test_reproduce_refuses_another_runs_folder_before_it_makes_the_data(tmp_path):
    """Every run is planned (and a folder of another configuration refused) before OUT/data is
    made: a refusal writes nothing."""
    out = tmp_path / "r"
    item = reproduce.ITEMS["table3"]
    planned = reproduce.run_path(out, item.configs[0], item.schedule, True, 0)
    planned.mkdir(parents=True)
    (planned / "stray.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(Exception, match="not a run folder and not empty"):
        reproduce.plan_reproduce(out, ["table3"], 1, quick=True)
    assert snapshot(tmp_path) == before and not (out / "data").exists()


def test_leftovers_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    """What ``gumbel sweep`` (its figure) and ``gumbel reproduce`` (its data) do when they start
    again: remove their own temporary files and folders, keep every other file."""
    figure, data = tmp_path / "figure_1ii.png", tmp_path / "data"
    leftover_dir = make_temp_dir(tmp_path, "data")
    (leftover_dir / "half.json").write_text("{")
    leftover_file = tmp_path / ".figure_1ii.png.k2j4h5g6.tmp.png"
    leftover_file.write_bytes(b"\x89PNG")
    kept = [tmp_path / ".figure_1ii.png.notes", tmp_path / ".data.json.k2j4h5g6.tmp.json"]
    for path in kept:
        path.write_text("mine")
    (tmp_path / "link").symlink_to(leftover_file)
    assert remove_leftovers(figure) == [leftover_file]
    assert remove_leftovers(data) == [leftover_dir]
    assert all(p.exists() for p in kept) and not leftover_dir.exists()


def test_a_report_that_cannot_measure_a_figure_writes_no_figures_folder(tmp_path):
    """``reproduce --only fig2`` whose runs lack grads.h5 used to leave an empty OUT/figures."""
    from test_report_items import fake_runs

    from gumbel_analysis.errors import InputError
    from gumbel_analysis.experiments.report import write_report

    out = tmp_path / "r"
    item = reproduce.ITEMS["fig2"]
    plan = reproduce.Plan(out, [item], [0], True, fake_runs(out, item, [0]))
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match=r"grads\.h5"):
        write_report(plan)
    assert snapshot(tmp_path) == before and not (out / "figures").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the size asked for, mounted for the test (skipped where one cannot be)."""
    mounted = []

    def mount(size: str):
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _train_in_a_process(data_dir, out, *more):  # noqa: F811 - data_dir is a path here
    args = [sys.executable, "-m", "gumbel_analysis", "train", "--data", str(data_dir)]
    args += ["--out", str(out), "--epochs", "1", *FAST, *more]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(data_dir, small_disk):  # noqa: F811
    """The gradient log used to hit the full disk inside HDF5, which then cannot close the file:
    repeated h5py tracebacks and a segmentation fault (exit 139), the run folder gone."""
    tiny = small_disk("64k")
    done = _train_in_a_process(data_dir, tiny / "run", "--max-iters", "3")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: No space left on device") and "Traceback" not in done.stderr
    assert str(tiny / "run") in lines[-1]
    sweep = [sys.executable, "-m", "gumbel_analysis", "sweep", "--out", str(tiny / "sweep")]
    sweep += ["--data", str(data_dir), "-t", "1", "--max-iters", "2", "--epochs", "1", *FAST]
    done = subprocess.run(sweep, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: No space left on device")
    assert not any(tiny.iterdir())  # nor an empty sweep folder
    # Mid-run: the first checkpoint fits, the second does not; the first is kept.
    disk = small_disk("48m")
    done = _train_in_a_process(
        data_dir, disk / "run", "--max-iters", "4", "--checkpoint-every", "2"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith(
        "error: "
    )
    assert torch.load(RunLayout(disk / "run").last, weights_only=False)["iteration"] == 2


def test_eval_refuses_a_device_it_does_not_know(run_dir):  # noqa: F811
    """It used to reach torch.device and end in a traceback."""
    refused(
        ["eval", run_dir, "--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto", run_dir
    )


@pytest.mark.parametrize(
    ("option", "value"), [("--data", "."), ("--batch-size", "2"), ("--device", "cpu")]
)
def test_eval_of_a_results_file_refuses_the_options_of_a_run(run_dir, data_dir, option, value):  # noqa: F811
    """They were silently ignored, where --score-threshold and --workers were refused."""
    gt = data_dir / "annotations" / "lvis_v1_val.json"
    args = ["eval", RunLayout(run_dir).results, "--gt", gt, option, value]
    refused(args, f"{option} is for a run; a results file is evaluated as it is", run_dir)


def test_sweep_on_data_that_is_not_lvis_leaves_no_out_folder(tmp_path, data_dir):  # noqa: F811
    """The data is first read by the first run: its refusal used to leave an empty OUT."""
    bad = shutil.copytree(data_dir, tmp_path / "bad")
    (bad / "annotations" / "lvis_v1_train.json").write_text('{"x": 1}')
    out = tmp_path / "sweep"
    args = ["sweep", "--out", out, "--data", bad, "-t", "1", "--max-iters", "1", *FAST]
    refused(args, "is not LVIS", tmp_path)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "variant"),
    [
        (["--score-threshold", "0.05"], "score0.05"),
        (["--max-dets", "10", "--iou-type", "bbox"], "dets10-bbox"),
    ],
)
def test_eval_with_other_settings_never_replaces_the_runs_own_metrics(
    tmp_path,
    run_dir,  # noqa: F811
    args,
    variant,
):
    """``gumbel table`` reads metrics.json as the run's: an evaluation at another score
    threshold, cut or with boxes only used to replace it."""
    run = RunLayout(_copy(run_dir, tmp_path))
    own = {p: p.read_bytes() for p in (run.results, run.metrics)}
    result = runner.invoke(app, ["eval", str(run.root), *args, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in own} == own
    assert run.metrics_for(variant).is_file() and run.results_for(variant).is_file()
    settings = json.loads(run.metrics_for(variant).read_text())
    assert settings["score_threshold"] == (0.05 if variant == "score0.05" else 1e-4)
    refused(["eval", run.root, *args, "--out", run.root], "is the run folder itself", run.root)


DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_in_the_data_or_a_runs_log_is_no_traceback(tmp_path, data_dir, run_dir):  # noqa: F811
    """Readers that json.loads a file raised RecursionError on JSON nested 100,000 deep."""
    bad = shutil.copytree(data_dir, tmp_path / "bad")
    (bad / "annotations" / "lvis_v1_train.json").write_text(DEEP)
    out = tmp_path / "run"
    refused(["train", "--data", bad, "--out", out, *FAST], "is nested too deeply", tmp_path)
    # An unfinished run whose metrics.jsonl ends in such a line: gumbel table still lists it.
    run = _copy(run_dir, tmp_path)
    RunLayout(run).metrics.unlink()
    RunLayout(run).final.unlink()
    with RunLayout(run).metrics_log.open("a") as f:
        f.write(DEEP + "\n")
    result = runner.invoke(app, ["table", str(run), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "unfinished" in result.output
    from gumbel_analysis.experiments.runs import read_run

    assert read_run(run).detail == "no iteration logged"
    assert reproduce.read_timings(tmp_path) == {}
    (tmp_path / reproduce.TIMINGS).write_text(DEEP)
    assert reproduce.read_timings(tmp_path) == {}
    (tmp_path / reproduce.TIMINGS).write_text("[1, 2]")
    assert reproduce.read_timings(tmp_path) == {}


def test_a_divergence_names_the_epoch_as_metrics_jsonl_does(data_dir, tmp_path):  # noqa: F811
    """It said "iteration 3 (epoch 1)" where metrics.jsonl logs the same step as epoch 0."""
    from test_engine import PoisonWeights, small_config

    from gumbel_analysis.engine.train import train
    from gumbel_analysis.errors import TrainingError

    out = tmp_path / "run"
    with pytest.raises(TrainingError) as caught:
        train(
            small_config(data_dir, out, loss="softmax"),
            progress=False,
            extra_hooks=[PoisonWeights()],
        )
    logged = json.loads(RunLayout(out).metrics_log.read_text().splitlines()[-1])["epoch"]
    assert f"(epoch {logged}, counted from 0 as in metrics.jsonl)" in str(caught.value)


def test_a_float32_run_is_not_resumed_with_amp_and_a_left_default_is_not_compared(tmp_path):
    """``--amp`` given to a rerun of a float32 folder would have continued it in bfloat16."""
    from gumbel_analysis.errors import InputError
    from gumbel_analysis.experiments.plan import RESUME, plan_run
    from gumbel_analysis.spec.config import TrainConfig, resolve

    run = tmp_path / "run"
    values = {"loss": "gumbel", "device": "cpu", "workers": 0, "epochs": 1}
    recorded = resolve(TrainConfig.from_dict({**values, "seed": 0, "out": str(run), "amp": False}))
    run.mkdir()
    (run / "config.json").write_text(json.dumps(recorded.to_dict()))
    (run / "last.pt").write_bytes(b"a checkpoint")  # planning reads only that it is there
    assert plan_run(run, values).action == RESUME  # --amp not given: the machine's choice
    assert plan_run(run, {**values, "amp": False}).action == RESUME
    with pytest.raises(InputError, match="amp = False, not True"):
        plan_run(run, {**values, "amp": True})

"""Parallel and cluster execution of planned runs (``experiments/launch.py``): ``--jobs 2`` on
the CPU, submitit's local executor standing in for SLURM, the per-run lock, bad options, and a
killed parallel reproduce resumed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.experiments import launch, material
from gumbel_analysis.experiments import reproduce as lib
from gumbel_analysis.experiments.launch import (
    LocalLauncher,
    SlurmLauncher,
    is_locked,
    job_path,
    lock_path,
    run_lock,
)
from gumbel_analysis.experiments.plan import PlannedRun
from gumbel_analysis.experiments.runs import FINISHED, read_run

runner = CliRunner()
TINY = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)
MACHINE = {"workers": 0, "device": "cpu"}


@pytest.fixture
def tiny_material(monkeypatch):
    monkeypatch.setattr(material, "BENCHMARK", TINY)
    monkeypatch.setattr(material, "QUICK_EPOCHS", {"1x": 1, "2x": 1})


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def span(run):
    """When a run started (its config.json) and ended (its metrics.json)."""
    return (run / "config.json").stat().st_mtime, (run / "metrics.json").stat().st_mtime


@pytest.mark.slow
def test_two_jobs_train_side_by_side_and_the_report_is_built(tiny_material, tmp_path):
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["table3"], 1, quick=True, machine=MACHINE)
    assert len(plan.runs) == 3
    ended = lib.carry_out(plan, launcher=LocalLauncher(jobs=2, progress=False), progress=False)
    assert ended and all(p.run.status == FINISHED for p in plan.runs)
    spans = sorted(span(p.run.path) for p in plan.runs)
    # two children at a time: the second run starts before the first one ends
    assert spans[1][0] < spans[0][1]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {p.run.name for p in plan.runs}
    assert all(not is_locked(p.run.path) for p in plan.runs)  # every lock released
    # the run folders hold only their own files: the locks are in runs/.launch
    assert sorted(p.name for p in (out / "runs" / ".launch").iterdir()) == sorted(
        f"{p.run.name}.lock" for p in plan.runs
    )
    result = runner.invoke(
        app,
        ["reproduce", "--out", str(out), "--only", "table3", "--quick", "--jobs", "2",
         "--workers", "0", "--device", "cpu", "--no-progress", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["runs"] == 3 and (out / "report.html").is_file()


def test_the_lock_makes_a_second_trainer_wait_then_replan(tmp_path, monkeypatch):
    """While another holder has the lock, a second carry-out waits and trains nothing; once the
    lock is free it plans the folder again (here still new: it trains)."""
    run = tmp_path / "runs" / "a-1x-s0"
    calls = []
    monkeypatch.setattr(launch, "carry_out_run", lambda item, **_: calls.append(item.action))
    item = PlannedRun(run, {"epochs": 1, "seed": 0, "out": str(run)}, "train", "new")
    messages = []
    with run_lock(run) as waited:
        assert not waited and is_locked(run) and lock_path(run).parent.name == ".launch"
        worker = threading.Thread(target=lambda: launch.carry_out_locked(item), daemon=True)
        monkeypatch.setattr(launch, "_stderr", messages.append)
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and calls == []  # waiting, not training
    worker.join(30)
    assert not worker.is_alive() and calls == ["train"]
    assert messages and "being trained by another command" in messages[0]
    assert not is_locked(run) and not run.exists()  # the lock lives beside the folder


@pytest.mark.slow
def test_submitit_local_executor_trains_two_runs_and_a_rerun_resubmits_nothing(
    tiny_material, tmp_path
):
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["fig2"], 1, quick=True, machine=MACHINE)  # Sigmoid, Gumbel
    assert len(plan.runs) == 2
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    slurm = SlurmLauncher(executor, poll_seconds=0.5, say=lambda _: None)
    assert lib.carry_out(plan, launcher=slurm, progress=False)
    for p in plan.runs:
        assert p.run.status == FINISHED and read_run(p.run.path).status == FINISHED
        record = json.loads(job_path(p.run.path).read_text())
        assert record["job_id"] and os.path.isdir(record["folder"])
    # a rerun finds every run finished: nothing is submitted
    again = lib.plan_reproduce(out, ["fig2"], 1, quick=True, machine=MACHINE)
    submitted = []
    slurm.executor = type("Refuse", (), {"submit": lambda *a: submitted.append(a)})()
    assert lib.carry_out(again, launcher=slurm, progress=False) and submitted == []
    assert all(p.run.action == "skip" for p in again.runs)


@pytest.mark.slow
def test_no_wait_returns_before_the_jobs_end_and_writes_no_report(tiny_material, tmp_path):
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["fig2"], 1, quick=True, machine=MACHINE)
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    said = []
    slurm = SlurmLauncher(executor, wait=False, say=said.append)
    assert lib.carry_out(plan, launcher=slurm, progress=False) is False
    assert said and "rerun the command" in said[0]
    assert not (out / "report.html").exists()
    deadline = time.time() + 240
    while time.time() < deadline and not all(
        (p.run.path / "metrics.json").is_file() for p in plan.runs
    ):
        time.sleep(1)
    assert all(read_run(p.run.path).status == FINISHED for p in plan.runs)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--jobs", "0"], "--jobs"),
        (["--no-wait"], "--no-wait"),
        (["--launcher", "slurm", "--time", "0"], "--time"),
        (["--launcher", "slurm", "--cpus-per-job", "0"], "--cpus-per-job"),
        (["--launcher", "slurm", "--gpus-per-job", "-1"], "--gpus-per-job"),
        (["--launcher", "slurm", "--partition", " "], "--partition"),
    ],
)
@pytest.mark.parametrize("command", ["reproduce", "sweep"])
def test_bad_launch_options_are_one_line_and_create_nothing(command, args, fragment, tmp_path):
    out = tmp_path / "new"
    result = runner.invoke(app, [command, "--out", str(out), *args])
    assert_one_line_error(result, fragment)
    assert not out.exists()


KILLED = """
import sys
from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.experiments import material
material.BENCHMARK = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)
material.QUICK_EPOCHS = {"1x": 3, "2x": 3}
sys.argv = ["gumbel", "reproduce", "--out", sys.argv[1], "--only", "table3", "--quick",
            "--jobs", "2", "--workers", "0", "--device", "cpu", "--no-progress",
            "--checkpoint-every", "2"]
app()
"""


@pytest.mark.slow
def test_a_killed_parallel_reproduce_resumes_from_the_checkpoints(tmp_path, monkeypatch):
    """SIGKILL the whole parallel reproduce (parent and children) once a run has a checkpoint:
    no report is written; the rerun resumes the killed runs and writes the report."""
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    runs = out / "runs"
    try:
        while time.time() < deadline:
            if runs.is_dir() and any((p / "last.pt").is_file() for p in runs.glob("*-s0")):
                break
            if proc.poll() is not None:
                pytest.fail("the reproduce ended before it was killed")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "report.html").exists()  # never half a report
    killed = {p.name for p in runs.glob("*-s0") if not (p / "metrics.json").is_file()}
    assert killed
    monkeypatch.setattr(material, "BENCHMARK", TINY)
    monkeypatch.setattr(material, "QUICK_EPOCHS", {"1x": 3, "2x": 3})
    plan = lib.plan_reproduce(out, ["table3"], 1, quick=True, machine=MACHINE)
    actions = {p.run.name: p.run.action for p in plan.runs}
    assert any(actions[name] == "resume" for name in killed), actions
    assert lib.carry_out(plan, launcher=LocalLauncher(jobs=2, progress=False), progress=False)
    for p in plan.runs:
        assert read_run(p.run.path).status == FINISHED
        epochs = [
            json.loads(line).get("epoch")
            for line in (p.run.path / "metrics.jsonl").read_text().splitlines()
            if '"epoch"' in line
        ]
        assert epochs == sorted(set(epochs)), (p.run.name, epochs)  # no epoch logged twice
    from gumbel_analysis.experiments.report import write_report

    summary = write_report(plan, 0.0)
    assert (out / "report.html").is_file() and summary["runs"] == 3


@pytest.mark.slow
def test_sweep_with_two_jobs(tmp_path):
    from gumbel_analysis.data.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "d", TINY, progress=False)
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--data", str(data), "-t", "0.9", "1.0", "--jobs", "2"]
    args += ["--max-iters", "2", "--workers", "0", "--batch-size", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--no-grad-log", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert sorted(r["name"] for r in runs) == ["t0.9-s0", "t1-s0"]
    assert all(r["status"] == FINISHED for r in runs)
    assert (out / "figure_1ii.png").is_file()
    assert sorted(p.name for p in (out / ".launch").iterdir()) == ["t0.9-s0.lock", "t1-s0.lock"]


# --- Second stages (DisAlign) wait for their first -----------------------------------------------


@pytest.fixture
def staged_item(tiny_material, monkeypatch):
    """An item of a first stage (Softmax) and DisAlign trained from it."""
    configs = (
        material.Config("softmax", "Softmax", "softmax"),
        material.Config("disalign", "DisAlign", "disalign", first_stage="softmax"),
    )
    item = material.Item("staged", "staged", "1x", configs)
    monkeypatch.setitem(material.ITEMS, "staged", item)
    monkeypatch.setattr(lib, "ITEMS", material.ITEMS)
    return item


def test_a_second_stage_is_planned_from_its_seeds_first_stage(staged_item, tmp_path):
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["staged"], 2, quick=True, machine=MACHINE)
    first = {p.run.seed: p.run.path for p in plan.runs if p.config.name == "softmax"}
    second = [p for p in plan.runs if p.config.name == "disalign"]
    assert len(second) == 2
    for p in second:
        assert p.run.after == (first[p.run.seed].resolve(),)
        assert p.run.values["from_run"] == str(first[p.run.seed].resolve())
        assert p.epochs == 2 and "epochs" not in p.run.values  # its own schedule


def test_a_second_stage_whose_first_did_not_finish_is_not_run(staged_item, tmp_path):
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["staged"], 1, quick=True, machine=MACHINE)
    second = plan.runs[1].run
    LocalLauncher(jobs=1, progress=False).run([second])
    assert "not run: its first stage" in second.error and not second.path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [2])  # one job: the plan's order (first stages first)
def test_a_second_stage_starts_after_its_first_ends(staged_item, tmp_path, jobs):
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["staged"], 1, quick=True, machine=MACHINE)
    launcher = LocalLauncher(jobs=jobs, progress=False)
    assert lib.carry_out(plan, launcher=launcher, progress=False)
    first, second = (p.run for p in plan.runs)
    assert first.status == second.status == FINISHED, (first.error, second.error)
    assert span(second.path)[0] > span(first.path)[1]
    config = read_run(second.path).config
    assert config["first_stage"]["loss"] == "softmax" and config["epochs"] == 2
    again = lib.plan_reproduce(out, ["staged"], 1, quick=True, machine=MACHINE)
    assert [p.run.action for p in again.runs] == ["skip", "skip"]  # the record matches


@pytest.mark.slow
def test_submitit_holds_a_second_stage_until_its_first_job_ends(staged_item, tmp_path):
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "r"
    plan = lib.plan_reproduce(out, ["staged"], 1, quick=True, machine=MACHINE)
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    said = []
    held = SlurmLauncher(executor, wait=False, say=said.append)
    assert held.run([p.run for p in plan.runs]) is False
    assert "1 second stages after their first" in said[0]
    assert not job_path(plan.runs[1].run.path).exists()  # not submitted yet
    slurm = SlurmLauncher(executor, poll_seconds=0.5, say=lambda _: None)
    assert lib.carry_out(plan, launcher=slurm, progress=False)
    first, second = (p.run for p in plan.runs)
    assert first.status == second.status == FINISHED, (first.error, second.error)
    assert span(second.path)[0] > span(first.path)[1]

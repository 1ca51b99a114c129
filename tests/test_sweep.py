"""`gumbel sweep`: one run per temperature and seed, resumable, then Fig. 1.ii and its table."""

import json
import os

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine.train import Trainer
from gumbel_analysis.errors import InputError, TrainingError
from gumbel_analysis.experiments import sweep as lib
from gumbel_analysis.spec.config import TrainConfig, resolve

runner = CliRunner()
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "2", "--device", "cpu", "--no-grad-log"]
FAST += ["--no-progress", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-t", "0"], "--temperature"),
        (["-t", "0.8", "-1"], "--temperature"),
        (["-t", "nan"], "--temperature"),
        (["-t", "inf"], "--temperature"),
        (["-t", "0.8", "0.80"], "given twice"),
        (["--seeds", "0"], "--seeds"),
        (["--max-iters", "0"], "--max-iters"),
        (["--epochs", "0"], "--epochs"),
        (["--device", "tpu"], "--device"),
        (["--plot", "fig.txt"], "fig.txt"),
        (["--loss", "sigmoid"], "--loss sigmoid"),
        (["--loss", "eql"], "--loss eql"),
        (["--loss", "nope"], "nope"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_options_are_one_line_and_create_nothing(tmp_path, args, fragment):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", "--out", str(out), *args])
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_bad_out_and_data(tmp_path):
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["sweep", "--out", str(tmp_path / "file"), "-t", "1"])
    assert_one_line_error(result, "not a folder")
    result = runner.invoke(
        app, ["sweep", "--out", str(tmp_path / "s"), "--data", str(tmp_path / "none")]
    )
    assert_one_line_error(result, "data folder not found")
    assert not (tmp_path / "s").exists()


def _fake_run(path, **values):
    path.mkdir(parents=True)
    if "temperature" in values:
        values["loss_options"] = {"temperature": values.pop("temperature")}
    # As the engine writes it: the resolved config (amp set by the device).
    cfg = TrainConfig.from_dict({"out": str(path), "evaluate": True, **values})
    cfg = resolve(cfg)
    (path / "config.json").write_text(json.dumps({**cfg.to_dict(), "amp": False}))
    return path


def test_plan_reads_each_folder(tmp_path):
    base = {"loss": "gumbel", "max_iters": 2}
    done = _fake_run(tmp_path / "t0.8-s0", temperature=0.8, seed=0, **base)
    for f in ("metrics.json", "model_final.pt", "last.pt"):
        (done / f).write_text("{}")
    (_fake_run(tmp_path / "t0.8-s1", temperature=0.8, seed=1, **base) / "last.pt").write_text("")
    _fake_run(tmp_path / "t1-s0", temperature=1.0, seed=0, **base)  # killed before a checkpoint
    (tmp_path / "t1-s0" / "metrics.jsonl").write_text("")
    diverged = _fake_run(tmp_path / "t1-s1", temperature=1.0, seed=1, **base)
    (diverged / "diverged.pt").write_text("")
    plan = lib.plan_sweep(base, [0.8, 1.0, 1.2], 2, 0, tmp_path)
    actions = {p.name: p.action for p in plan}
    assert actions == {
        "t0.8-s0": "skip",
        "t0.8-s1": "resume",
        "t1-s0": "restart",
        "t1-s1": "skip",
        "t1.2-s0": "train",
        "t1.2-s1": "train",
    }
    assert [p.seed for p in plan] == [0, 1] * 3


def test_plan_refuses_another_configuration_or_unknown_files(tmp_path):
    _fake_run(tmp_path / "t1-s0", seed=0, loss="sigmoid")
    with pytest.raises(InputError, match="loss"):
        lib.plan_sweep({"loss": "gumbel"}, [1.0], 1, 0, tmp_path)
    other = tmp_path / "other"
    _fake_run(other / "t1-s0", temperature=0.9, seed=0)
    with pytest.raises(InputError, match="temperature"):
        lib.plan_sweep({}, [1.0], 1, 0, other)
    # An option left out on a rerun means its default, not "whatever the folder holds".
    short = tmp_path / "short"
    _fake_run(short / "t1-s0", temperature=1.0, seed=0, max_iters=2)
    assert lib.plan_sweep({"max_iters": 2}, [1.0], 1, 0, short)[0].action == "restart"
    with pytest.raises(InputError, match="max_iters"):
        lib.plan_sweep({}, [1.0], 1, 0, short)
    keep = tmp_path / "keep"
    (_fake_run(keep / "t1-s0", temperature=1.0, seed=0) / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt"):
        lib.plan_sweep({}, [1.0], 1, 0, keep)
    result = runner.invoke(app, ["sweep", "--out", str(tmp_path), "-t", "1", "--loss", "gumbel"])
    assert_one_line_error(result, "loss")


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.slow
def test_killed_sweep_continues(data_dir, tmp_path, monkeypatch):
    """Two temperatures; the second run is killed after its first iteration (a checkpoint is
    written every iteration). The rerun skips the finished run and resumes the other."""
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--temperature", "0.8", "1.2", "--data", str(data_dir)]
    args += [*FAST, "--max-iters", "2", "--json"]
    run_step = Trainer.run_step
    steps: list[str] = []

    def killed_run_step(self, images, targets):
        steps.append(self.run.root.name)
        if self.run.root.name == "t1.2-s0" and self.iteration == 1:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between two iterations
        run_step(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", killed_run_step)
    first = runner.invoke(app, args)
    assert first.exit_code != 0  # interrupted
    assert (out / "t0.8-s0" / "metrics.json").is_file()
    assert (out / "t1.2-s0" / "last.pt").is_file()
    assert not (out / "t1.2-s0" / "metrics.json").exists()
    table = runner.invoke(app, ["table", str(out), "--json"])
    statuses = sorted(r["status"] for r in json.loads(table.stdout)["rows"])
    assert statuses == ["finished", "unfinished"]
    before = _mtimes(out / "t0.8-s0")

    steps.clear()

    def counting(self, images, targets):
        steps.append(self.run.root.name)
        run_step(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", counting)
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    data = json.loads(second.stdout)
    actions = {r["name"]: (r["action"], r["status"]) for r in data["runs"]}
    assert actions == {"t0.8-s0": ("skip", "finished"), "t1.2-s0": ("resume", "finished")}
    assert steps == ["t1.2-s0"]  # one iteration left of the killed run, none of the other
    assert _mtimes(out / "t0.8-s0") == before  # the finished run's files are untouched
    assert all(r["metrics"] and "APr" in r["metrics"] for r in data["runs"])
    assert [p["temperature"] for p in data["points"]] == [0.8, 1.2]
    assert os.path.getsize(data["figure"]) > 0 and data["figure"].endswith("figure_1ii.png")
    rows = data["table"]["rows"]
    assert [r["temperature"] for r in rows] == [0.8, 1.2] and all(r["n"] == 1 for r in rows)
    log = (out / "t1.2-s0" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["iteration"] == 2

    # A third run does nothing but the table and the figure; the rich table names both runs.
    third = runner.invoke(app, args[:-1])
    assert third.exit_code == 0, third.output
    assert "0.8" in third.stdout and "1.2" in third.stdout and "figure written" in third.stdout
    assert "nan" not in third.stdout.lower()


@pytest.mark.slow
def test_killed_while_evaluating_or_before_a_checkpoint(data_dir, tmp_path, monkeypatch):
    """A run killed during its evaluation is evaluated on the rerun; one killed before its
    first checkpoint trains again from scratch; one that diverges is failed and skipped."""
    import gumbel_analysis.engine.train as engine_train

    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--data", str(data_dir), *FAST, "--max-iters", "1"]
    args.append("--json")
    evaluate_run = engine_train.evaluate_run

    def killed_evaluation(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_train, "evaluate_run", killed_evaluation)
    assert runner.invoke(app, [*args, "-t", "1.0"]).exit_code != 0
    assert (out / "t1-s0" / "model_final.pt").is_file()
    assert not (out / "t1-s0" / "metrics.json").exists()
    monkeypatch.setattr(engine_train, "evaluate_run", evaluate_run)

    run_step = Trainer.run_step

    def killed_at_once(self, images, targets):
        if self.run.root.name == "t1.1-s0":
            raise KeyboardInterrupt
        run_step(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", killed_at_once)
    assert runner.invoke(app, [*args, "-t", "1.0", "1.1"]).exit_code != 0
    assert (out / "t1-s0" / "metrics.json").is_file()  # evaluated, not trained again
    assert (out / "t1.1-s0" / "config.json").is_file()
    assert not (out / "t1.1-s0" / "last.pt").exists()

    # The rerun; a third temperature diverges at once: it is listed as failed, the others go on.
    def diverges(self, images, targets):
        if self.run.root.name == "t0.5-s0":
            raise TrainingError("non-finite loss at iteration 1 (test)")
        run_step(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", diverges)
    for attempt in range(2):  # the second attempt trains nothing, the failed run included
        result = runner.invoke(app, [*args, "-t", "0.5", "1.0", "1.1"])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 runs failed")
        runs = json.loads(result.stdout)["runs"]
        got = {r["name"]: (r["found"], r["action"], r["status"]) for r in runs}
        if attempt == 0:
            assert got == {
                "t0.5-s0": ("new", "train", "failed"),
                "t1-s0": ("finished", "skip", "finished"),
                "t1.1-s0": ("unfinished", "restart", "finished"),
            }
    assert got == {
        "t0.5-s0": ("failed", "skip", "failed"),
        "t1-s0": ("finished", "skip", "finished"),
        "t1.1-s0": ("finished", "skip", "finished"),
    }
    assert (out / "t0.5-s0" / "diverged.pt").is_file()
    table = runner.invoke(app, ["table", str(out), "--json"])
    rows = json.loads(table.stdout)["rows"]
    assert sorted((r["status"], r["temperature"]) for r in rows) == [
        ("failed", 0.5),
        ("finished", 1.0),
        ("finished", 1.1),
    ]


def test_restart_removes_only_the_files_a_run_writes_before_its_first_checkpoint():
    from gumbel_analysis.experiments import plan
    from gumbel_analysis.spec.layout import RunLayout

    paths = RunLayout(lib.Path("x"))
    names = {paths.config.name, paths.metrics_log.name, paths.grads.name}
    assert names == plan.PRE_CHECKPOINT_FILES

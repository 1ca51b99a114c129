"""`gumbel table`: run folders -> one row per configuration, mean and sample std over seeds,
deltas to a baseline, unfinished and failed runs listed, four text formats and JSON."""

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.experiments import runs as runs_mod
from gumbel_analysis.experiments.stats import compare, summarize
from gumbel_analysis.experiments.table import build_table
from gumbel_analysis.spec.config import TrainConfig, resolve

runner = CliRunner()
METRICS = ("AP", "APr", "APc", "APf", "APb")


def make_run(root, name, *, seed=0, metrics=None, files=("last.pt", "model_final.pt"), **cfg):
    """A fake run folder as `gumbel train` leaves it: the resolved config and, if finished,
    metrics.json (the checkpoints are empty files: only their presence matters here)."""
    path = root / name
    path.mkdir(parents=True)
    if "temperature" in cfg:
        cfg["loss_options"] = {"temperature": cfg.pop("temperature")}
    # As the engine writes it: resolved, with the activation and every loss option filled.
    config = resolve(TrainConfig.from_dict({"seed": seed, "out": str(path), **cfg}))
    config = config.to_dict()
    (path / "config.json").write_text(json.dumps(config))
    for f in files:
        (path / f).write_bytes(b"")
    if metrics is not None:
        full = {"loss": config["loss"], "preset": config["preset"], "AP50": 1.0, **metrics}
        (path / "metrics.json").write_text(json.dumps(full))
    return path


def ap(values):
    return dict(zip(METRICS, values, strict=True))


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def table_json(*args):
    result = runner.invoke(app, ["table", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def finished(rows):
    return [r for r in rows if r["status"] == "finished"]


@pytest.fixture
def runs(tmp_path):
    """Two seeds of gumbel, one seed of sigmoid, an unfinished and a failed run."""
    root = tmp_path / "runs"
    make_run(root, "g-s0", seed=0, metrics=ap([20.0, 9.0, 18.5, 27.0, 21.0]), temperature=1.0)
    make_run(root, "g-s1", seed=1, metrics=ap([22.5, 12.0, 19.0, 28.0, None]), temperature=1.0)
    make_run(root, "sig", metrics=ap([16.0, 1.0, 13.0, 27.5, 17.0]), loss="sigmoid")
    make_run(root, "killed", seed=2, files=("last.pt",), temperature=1.0)
    (root / "killed" / "metrics.jsonl").write_text('{"iteration": 40}\n{"iteration": 60}\n')
    make_run(root, "diverged", seed=3, files=("last.pt", "diverged.pt"), temperature=0.5)
    return root


def test_seeds_become_one_row_with_mean_and_sample_std(runs):
    data = table_json(runs)
    rows = finished(data["rows"])
    assert len(rows) == 2
    gumbel = next(r for r in rows if r["loss"] == "gumbel")
    assert gumbel["n"] == 2 and sorted(gumbel["seeds"]) == [0, 1]
    for metric, values in {"AP": [20.0, 22.5], "APr": [9.0, 12.0], "APf": [27.0, 28.0]}.items():
        stat = gumbel["metrics"][metric]
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["std"] == pytest.approx(np.std(values, ddof=1))  # sample std
        assert stat["n"] == 2
    # APb is undefined (null) in one run: that run is left out of that metric only.
    assert gumbel["metrics"]["APb"] == {"mean": 21.0, "std": None, "n": 1}
    sigmoid = next(r for r in rows if r["loss"] == "sigmoid")
    assert sigmoid["n"] == 1 and sigmoid["metrics"]["AP"] == {"mean": 16.0, "std": None, "n": 1}
    assert sigmoid["activation"] == "sigmoid" and gumbel["activation"] == "gumbel"
    assert gumbel["temperature"] == 1.0 and sigmoid["temperature"] is None  # unused by Sigmoid


def test_unfinished_and_failed_runs_are_listed(runs):
    rows = table_json(runs)["rows"]
    by_status = {r["status"]: r for r in rows if r["status"] != "finished"}
    assert set(by_status) == {"unfinished", "failed"}
    assert by_status["unfinished"]["runs"] == [str(runs / "killed")]
    assert "60" in by_status["unfinished"]["detail"]  # the last logged iteration
    assert by_status["failed"]["runs"] == [str(runs / "diverged")]
    assert by_status["failed"]["temperature"] == 0.5
    text = runner.invoke(app, ["table", str(runs)])
    assert text.exit_code == 0, text.output
    assert "unfinished" in text.stdout and "failed" in text.stdout
    assert "nan" not in text.stdout.lower()
    assert str(runs / "killed") in text.stdout and str(runs / "diverged") in text.stdout


def test_not_evaluated_and_mid_training_metrics_are_not_finished(tmp_path):
    make_run(tmp_path, "noeval", files=("last.pt", "model_final.pt"))
    # metrics.json of a mid-training checkpoint (gumbel eval on last.pt): not a result.
    make_run(tmp_path, "partial", metrics=ap([1, 1, 1, 1, 1]), files=("last.pt",))
    # Checkpoints deleted after the evaluation: still a result.
    make_run(tmp_path, "cleaned", metrics=ap([5, 5, 5, 5, 5]), files=())
    rows = table_json(tmp_path)["rows"]
    status = {r["runs"][0].rsplit("/", 1)[1]: r["status"] for r in rows}
    assert status == {"cleaned": "finished", "noeval": "not evaluated", "partial": "unfinished"}


def test_n1_std_is_a_dash_and_no_nan_is_printed(runs):
    for fmt in ("rich", "markdown", "latex", "csv"):
        result = runner.invoke(app, ["table", str(runs / "sig"), "--format", fmt])
        assert result.exit_code == 0, result.output
        assert "nan" not in result.stdout.lower() and "inf" not in result.stdout.lower()
        if fmt == "rich":
            assert "16.0±–" in result.stdout
        if fmt == "markdown":
            assert "16.0 ± –" in result.stdout
        if fmt == "latex":
            assert r"16.0 $\pm$ --" in result.stdout


def test_formats(runs):
    md = runner.invoke(app, ["table", str(runs), "--format", "markdown", "--digits", "2"])
    lines = md.stdout.splitlines()
    assert lines[0].startswith("| loss | act. |") and "| AP |" in lines[0]
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    row = next(line for line in lines if "| gumbel |" in line and "| 2 |" in line)
    assert f"21.25 ± {np.std([20, 22.5], ddof=1):.2f}" in row
    assert sum(line.startswith("| ") for line in lines) == 2 + 4  # header, rule, 4 rows

    latex = runner.invoke(app, ["table", str(runs), "--format", "latex"]).stdout
    assert r"\begin{tabular}" in latex and latex.rstrip().endswith(r"\end{tabular}")
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 1 + 4 and all(line.count("&") == body[0].count("&") for line in body)

    text = runner.invoke(app, ["table", str(runs), "--format", "csv"]).stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 4
    g = next(r for r in table if r["loss"] == "gumbel" and r["status"] == "finished")
    assert float(g["AP"]) == pytest.approx(21.25)
    assert float(g["AP_std"]) == pytest.approx(np.std([20, 22.5], ddof=1))
    s = next(r for r in table if r["loss"] == "sigmoid")
    assert s["AP_std"] == "" and s["n"] == "1"
    assert next(r for r in table if r["status"] == "failed")["AP"] == ""


def test_baseline_deltas_and_the_spread_rule(tmp_path):
    root = tmp_path / "r"
    for seed, (a, r) in enumerate([(20.0, 5.0), (21.0, 7.0)]):
        make_run(root / "base", f"s{seed}", seed=seed, loss="sigmoid", metrics=ap([a, r, 1, 1, 1]))
    for seed, (a, r) in enumerate([(25.0, 5.5), (26.0, 6.0)]):
        make_run(root / "gumbel", f"s{seed}", seed=seed, metrics=ap([a, r, 1, 1, 1]))
    make_run(root, "gol", loss="gol", metrics=ap([30.0, 9.0, 1, 1, 1]))
    data = table_json(root / "gumbel", root / "gol", "--baseline", root / "base")
    rows = data["rows"]
    assert rows[0]["baseline"] and rows[0]["loss"] == "sigmoid" and rows[0]["deltas"] is None
    gumbel = next(r for r in rows if r["loss"] == "gumbel")
    # Both ran seeds 0 and 1: paired t tests, computed independently by scipy.
    for metric, base, row in (("AP", [20, 21], [25, 26]), ("APr", [5, 7], [5.5, 6])):
        diffs = np.subtract(row, base)
        got = gumbel["deltas"][metric]
        assert got["test"] == "paired" and got["df"] == 1
        assert got["delta"] == pytest.approx(diffs.mean())
        assert got["se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(2))
        if diffs.std() > 0:
            ref = scipy_stats.ttest_rel(row, base)
            assert got["t"] == pytest.approx(ref.statistic)
            assert got["p"] == pytest.approx(ref.pvalue)
    # AP rose by exactly 5 on both seeds: no spread, t infinite (null), p = 0
    assert gumbel["deltas"]["AP"]["t"] is None and gumbel["deltas"]["AP"]["p"] == 0.0
    assert gumbel["deltas"]["AP"]["exceeds"] is True and gumbel["deltas"]["APr"]["exceeds"] is False
    gol = next(r for r in rows if r["loss"] == "gol")
    assert gol["deltas"]["AP"] == {
        "delta": 9.5, "se": None, "t": None, "df": None, "p": None, "test": None, "exceeds": None
    }  # fmt: skip
    md = runner.invoke(
        app,
        [
            "table",
            str(root / "gumbel"),
            str(root / "gol"),
            "--baseline",
            str(root / "base"),
            "--format",
            "markdown",
        ],
    ).stdout
    assert "(+5.0*)" in md and "(+9.5?)" in md and "baseline" in md


def test_baseline_errors(tmp_path):
    make_run(tmp_path / "b", "a", metrics=ap([1, 1, 1, 1, 1]))
    make_run(tmp_path / "b", "c", loss="sigmoid", metrics=ap([1, 1, 1, 1, 1]))
    make_run(tmp_path, "u", files=("last.pt",))
    result = runner.invoke(
        app, ["table", str(tmp_path / "b" / "a"), "--baseline", str(tmp_path / "b")]
    )
    assert_one_line_error(result, "2 configurations")
    result = runner.invoke(app, ["table", str(tmp_path / "b"), "--baseline", str(tmp_path / "u")])
    assert_one_line_error(result, "no finished run")


def test_bad_input_is_one_line(tmp_path):
    assert_one_line_error(runner.invoke(app, ["table", str(tmp_path / "no")]), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(runner.invoke(app, ["table", str(tmp_path / "empty")]), "no run folder")
    run = make_run(tmp_path, "r", metrics=ap([1, 1, 1, 1, 1]))
    (run / "metrics.json").write_text("{not json")
    assert_one_line_error(runner.invoke(app, ["table", str(run)]), "metrics.json")
    run2 = make_run(tmp_path, "r2", metrics=ap([1, 1, 1, 1, 1]))
    result = runner.invoke(app, ["table", str(run2), "--group-by", "colour"])
    assert_one_line_error(result, "--group-by")


def test_differing_fields_get_a_column_and_group_by_merges(tmp_path):
    make_run(tmp_path, "a", metrics=ap([10, 1, 1, 1, 1]), max_iters=100)
    make_run(tmp_path, "b", metrics=ap([14, 1, 1, 1, 1]), max_iters=200)
    data = table_json(tmp_path)
    assert "max_iters" in data["columns"] and len(finished(data["rows"])) == 2
    merged = table_json(tmp_path, "--group-by", "loss", "temperature")
    (row,) = merged["rows"]
    assert merged["columns"] == ["loss", "temperature"]
    assert row["n"] == 2 and row["metrics"]["AP"]["mean"] == 12
    assert row["varying"] == {"max_iters": [100, 200]}


def test_rows_differing_in_a_loss_option_show_it(tmp_path):
    make_run(tmp_path, "stable", metrics=ap([10, 1, 1, 1, 1]))
    make_run(tmp_path, "paper", metrics=ap([9, 1, 1, 1, 1]), loss_options={"gumbel_mode": "paper"})
    make_run(tmp_path, "t08", metrics=ap([9, 1, 1, 1, 1]), loss_options={"temperature": 0.8})
    data = table_json(tmp_path)
    assert "loss_options" in data["columns"] and len(data["rows"]) == 3
    md = runner.invoke(app, ["table", str(tmp_path), "--format", "markdown"]).stdout
    assert "gumbel_mode=paper" in md and "gumbel_mode=stable" in md


def test_folders_are_expanded_once(tmp_path):
    make_run(tmp_path / "sweep", "t0.8-s0", temperature=0.8, metrics=ap([1, 1, 1, 1, 1]))
    make_run(tmp_path / "sweep", "t1-s0", temperature=1.0, metrics=ap([2, 2, 2, 2, 2]))
    data = table_json(tmp_path / "sweep", tmp_path / "sweep" / "t1-s0", tmp_path)
    assert sorted(r["temperature"] for r in data["rows"]) == [0.8, 1.0]
    assert sum(len(r["runs"]) for r in data["rows"]) == 2


def test_temperature_and_activation_accessors():
    legacy = {"loss": "gol", "temperature": 0.9}
    assert runs_mod.run_temperature(legacy) == 0.9 and runs_mod.run_activation(legacy) == "gumbel"
    new = {"loss": "eql", "activation": "gumbel", "loss_options": {"temperature": 1.1}}
    assert runs_mod.run_temperature(new) == 1.1 and runs_mod.run_activation(new) == "gumbel"
    assert runs_mod.run_temperature({"loss": "sigmoid", "loss_options": {}}) is None


def test_summarize_and_welch_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        xs, ys = rng.normal(20, 2, n), rng.normal(21, 1, n + 1)
        s = summarize(list(xs))
        assert s.mean == pytest.approx(xs.mean()) and s.std == pytest.approx(xs.std(ddof=1))
        d = compare(summarize(list(ys)), s)
        se = math.sqrt(ys.var(ddof=1) / (n + 1) + xs.var(ddof=1) / n)
        ref = scipy_stats.ttest_ind(ys, xs, equal_var=False)
        assert d.se == pytest.approx(se) and d.test == "welch"
        assert d.t == pytest.approx(ref.statistic) and d.p == pytest.approx(ref.pvalue)
        assert d.df == pytest.approx(ref.df) and d.exceeds == (ref.pvalue < 0.05)
    assert summarize([None, float("nan")]) is None
    assert summarize([3.0, None]).std is None


def test_seeds_that_repeat_in_a_row_are_not_paired(tmp_path):
    """Grouped by the loss alone, seeds 0, 1 and 0 (two temperatures) are one row: pairing it
    with a baseline of seeds 0 and 1 would drop a run, so the test is Welch's on all three."""
    root = tmp_path / "r"
    for seed, a in ((0, 20.0), (1, 21.0)):
        make_run(root / "base", f"s{seed}", seed=seed, loss="sigmoid", metrics=ap([a, 5, 1, 1, 1]))
    gumbel = [(0, 0.9, 25.0), (1, 0.9, 27.0), (0, 1.1, 24.0)]
    for seed, temp, a in gumbel:
        make_run(root / "g", f"t{temp}-s{seed}", seed=seed, temperature=temp, metrics=ap([a] * 5))
    data = table_json(root / "g", "--baseline", root / "base", "--group-by", "loss")
    got = next(r for r in data["rows"] if r["loss"] == "gumbel")["deltas"]["AP"]
    ref = scipy_stats.ttest_ind([25.0, 27.0, 24.0], [20.0, 21.0], equal_var=False)
    assert got["test"] == "welch" and got["p"] == pytest.approx(ref.pvalue)


def test_table_does_not_import_torch(runs):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom gumbel_analysis.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['table', {str(runs)!r}, '--format', 'csv'])\n"
        "assert r.exit_code == 0, r.output\nassert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_table_library_call(runs):
    found = runs_mod.read_runs([runs])
    table = build_table(found)
    assert [r.status for r in table.rows].count("finished") == 2
    assert len(table.rows) == 4

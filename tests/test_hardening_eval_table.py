"""Issue 22's cases for gumbel eval and gumbel table: one line on stderr, exit 2, nothing on disk
changed; a run's metrics never replaced by another's; leftovers of a killed evaluation removed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_hardening
from lvis_problems import make_problem
from test_hardening import FAST, refused, runner
from test_table import ap, assert_one_line_error, make_run

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine.inference import output_paths, part_path, remove_own_leftovers
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation.results import read_results
from gumbel_analysis.experiments.runs import find_runs, read_run
from gumbel_analysis.spec.layout import RunLayout

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
# test_hardening's fixtures: a working folder, a small synthetic dataset and a 2-iteration run.
cwd = test_hardening.cwd
data_dir = test_hardening.data_dir
run_dir = test_hardening.run_dir
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def problem(tmp_path):
    gt, results = make_problem(11, num_images=6, dets_per_image=4)
    gt_path = tmp_path / "val.json"
    gt_path.write_text(json.dumps(gt))
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    return gt_path, results_path, results


# ----------------------------------------------------------------------------- 1: --out a run


def test_eval_of_a_results_file_never_replaces_a_runs_metrics(cwd, problem, tmp_path):
    gt, results, _ = problem
    run = make_run(tmp_path, "run", metrics=ap([20, 9, 18, 27, 21]))
    before = (run / "metrics.json").read_bytes()
    refused(["eval", results, "--gt", gt, "--out", run], f"--out {run} is a run folder", run)
    assert (run / "metrics.json").read_bytes() == before
    out = tmp_path / "plain"
    out.mkdir()
    assert (
        runner.invoke(app, ["eval", str(results), "--gt", str(gt), "--out", str(out)]).exit_code
        == 0
    )
    assert (out / "metrics.json").is_file()


def test_eval_of_a_run_never_writes_into_another_run(tmp_path):
    run = RunLayout(make_run(tmp_path, "run", metrics=ap([1, 1, 1, 1, 1])))
    other = make_run(tmp_path, "other", metrics=ap([2, 2, 2, 2, 2]))
    with pytest.raises(InputError, match=r"--out .*other is another run folder"):
        output_paths(run, _variant(None), other)
    with pytest.raises(InputError, match=r"is the run folder itself.*other --data"):
        output_paths(run, _variant("data/elsewhere"), run.root)
    same = output_paths(run, _variant(None), run.root)  # its own data: its own files
    assert same.results == run.results and same.metrics == run.metrics


# ----------------------------------------------------------------------------- 2: bad metrics


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("AP", "12.5", '"12.5"'),
        ("AP", [12.5], "[12.5]"),
        ("APr", True, "true"),
        ("APb", float("nan"), "NaN"),
        ("bbox/AP50", {"a": 1}, '{"a": 1}'),
    ],
)
def test_a_metric_that_is_not_a_number_is_refused_naming_file_and_key(tmp_path, key, value, shown):
    run = make_run(tmp_path, "run", metrics=ap([20, 9, 18, 27, 21]))
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, key: value}))
    result = runner.invoke(app, ["table", str(run)])
    assert_one_line_error(result, f"{run / 'metrics.json'}: {key} is {shown}")
    with pytest.raises(InputError, match=key):  # gumbel reproduce reads runs through read_run
        read_run(run)


def test_null_for_an_undefined_metric_and_text_fields_stay_accepted(tmp_path):
    run = make_run(tmp_path, "run", metrics={**ap([20, None, 18, 27, 21]), "bbox/APl": None})
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(activation="gumbel", data="data/lvis", num_detections=12, score_threshold=1e-4)
    (run / "metrics.json").write_text(json.dumps(metrics))
    result = runner.invoke(app, ["table", str(run), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert row["status"] == "finished" and row["metrics"]["APr"] is None
    assert row["metrics"]["AP"]["mean"] == 20


# ----------------------------------------------------------------------------- 3: symlink loops


def test_links_back_to_a_parent_folder_are_walked_once(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "a/t1-s0", metrics=ap([1, 1, 1, 1, 1]))
    make_run(root, "b/t1-s1", seed=1, metrics=ap([3, 3, 3, 3, 3]))
    for folder in (root, root / "a", root / "b"):  # 2**(depth) paths without a seen set
        for i in range(6):
            os.symlink(root, folder / f"up{i}")
    found = find_runs([root])
    assert sorted(p.name for p in found) == ["t1-s0", "t1-s1"]
    data = json.loads(runner.invoke(app, ["table", str(root), "--json"]).stdout)
    assert [r["n"] for r in data["rows"]] == [2]


# ----------------------------------------------------------------------------- 4: deep JSON


def test_a_deep_extra_key_in_a_results_file_is_one_line(cwd, problem, tmp_path):
    gt, _, results = problem
    path = tmp_path / "deep.json"
    text = json.dumps(results)
    path.write_text(text[:-2] + ', "extra": ' + DEEP + "}]")
    refused(["eval", path, "--gt", gt], f"results file {path} is not valid JSON: nested too deeply")
    with pytest.raises(InputError, match="nested too deeply"):
        read_results(path, geometry=False)  # gumbel kl-dist's reading
    nested = tmp_path / "nested.json"
    nested.write_text("[" + text[1:-1] + ", " + DEEP + "]")  # a detection that is a deep list
    refused(["eval", nested, "--gt", gt], "nested too deeply")


def test_a_deep_ground_truth_is_one_line(cwd, problem, tmp_path):
    _, results, _ = problem
    gt = tmp_path / "deep_gt.json"
    gt.write_text('{"images": [], "info": ' + DEEP + "}")  # a key the reader skips
    refused(["eval", results, "--gt", gt], f"{gt} is not valid JSON: nested too deeply")


@pytest.mark.parametrize("name", ["metrics.json", "config.json"])
def test_a_deep_run_file_is_refused_by_table(cwd, tmp_path, name):
    run = make_run(tmp_path, "run", metrics=ap([1, 1, 1, 1, 1]))
    (run / name).write_text('{"AP": ' + DEEP + "}")
    refused(["table", run], f"{run / name} is not valid JSON: nested too deeply", run)


def test_a_deep_train_config_is_refused(cwd, tmp_path):
    config = tmp_path / "deep.json"
    config.write_text('{"loss": ' + DEEP + "}")
    refused(["train", "--config", config, "--out", cwd / "run"], f"{config} is nested too deeply")
    assert not (cwd / "run").exists()


# ----------------------------------------------------------------------------- 5: huge non-lists


_PEAK = (
    "import resource, sys\n"
    "from gumbel_analysis.errors import InputError\n"
    "from gumbel_analysis.evaluation.results import read_results\n"
    "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "try:\n    read_results(sys.argv[1])\nexcept InputError as err:\n    print(err)\n"
    "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"0" * (50 << 20), "is not a list of detections"),
        (b"\0" * (50 << 20), "is not valid JSON: it starts with byte 0x00"),
        (b"[" + b"0," * (25 << 20) + b"0]", "detection 0 is not an object"),
        (b"[{}" + b",0" * (25 << 20) + b"]", "detection 0"),
    ],
    ids=["digits", "nul", "list-of-zeros", "object-then-zeros"],
)
def test_a_large_file_that_is_no_list_of_detections_is_refused_in_little_memory(
    cwd, problem, tmp_path, monkeypatch, content, fragment
):
    gt, _, _ = problem
    path = tmp_path / "zeros.json"
    path.write_bytes(content)
    refused(["eval", path, "--gt", gt], fragment)
    # the whole-file decoding maps a large file: make 50 MB large here
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    code = "import gumbel_analysis.evaluation.results as r\nr._JSON_CHECK_BYTES = 1 << 20\n"
    code += "r._MAX_DETECTION_BYTES = 1 << 20\nr._PIECE_BYTES = 1 << 20\n" + _PEAK
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, env=env
    )
    message, grown = out.stdout.strip().splitlines()
    assert fragment in message
    assert int(grown) < 20, f"peak memory grew by {grown} MB reading a 50 MB file"


# ----------------------------------------------------------------------------- 6: other classes


def test_eval_on_data_of_other_classes_names_the_data(cwd, run_dir, tmp_path):
    other = make_synthetic(
        tmp_path / "other",
        SyntheticSpec(classes=4, train_images=20, val_images=4, size=64, seed=3),
        progress=False,
    )
    line = refused(["eval", run_dir, "--data", other, *FAST], "classes of data", run_dir, other)
    assert "differ from the run's" in line and "does not fit" not in line


# ----------------------------------------------------------------------------- 7: leftovers


def _leftovers(root: Path, stem: str = "results") -> list[Path]:
    made = [
        part_path(root / f"{stem}.json", 0),
        part_path(root / f"{stem}.json", 3),
        root / f".{stem}.rank0.part.jsonl.abcd1234.tmp.jsonl",
        root / f".{stem}.rank5.part.jsonl.x_y_z_12.tmp.jsonl",
        root / f".{stem}.json.qwer5678.tmp.json",
    ]
    for path in made:
        path.write_text("[]\n")
    return made


def test_the_next_evaluation_removes_its_own_leftovers_only(tmp_path):
    made = _leftovers(tmp_path)
    others = [  # not what this evaluation writes: kept
        tmp_path / "results.other.rank0.part.jsonl",
        tmp_path / ".results.other.json.abcd1234.tmp.json",
        tmp_path / "results.rank0.part.jsonl.bak",
        tmp_path / ".config.json.abcd1234.tmp.json",
        tmp_path / "results.json",
    ]
    for path in others:
        path.write_text("x")
    removed = remove_own_leftovers(tmp_path / "results.json")
    assert sorted(removed) == sorted(made)
    assert all(p.exists() for p in others) and not any(p.exists() for p in made)


def test_eval_of_a_killed_evaluations_run_folder_cleans_it(cwd, run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    made = _leftovers(run)
    (run / ".metrics.json.zxcv0987.tmp.json").write_text("{")
    result = runner.invoke(app, ["eval", str(run), *FAST])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in made)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert json.loads((run / "metrics.json").read_text())["AP"] is not None


def _variant(data):
    """The evaluation's variant for a run trained on ``data/lvis``, evaluated on ``data``."""
    from gumbel_analysis.engine.inference import variant_name
    from gumbel_analysis.spec.config import TrainConfig

    return variant_name(TrainConfig(data="data/lvis"), data, {})

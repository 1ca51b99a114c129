"""``gumbel eval RESULTS --gt``: detectron2- and mmdetection-shaped files, no torch, --out."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lvis_problems import make_problem
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.evaluation.metrics import evaluate_results
from gumbel_analysis.spec.layout import RunLayout

runner = CliRunner()
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture
def problem(tmp_path):
    gt, results = make_problem(11)
    gt_path = tmp_path / "val.json"
    gt_path.write_text(json.dumps(gt))
    return gt, results, gt_path


def run_json(*args):
    result = runner.invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_detectron2_file_equals_lvis_api(problem, tmp_path):
    _gt, results, gt_path = problem
    path = tmp_path / "lvis_instances_results.json"  # detectron2: one file, bbox and segm
    path.write_text(json.dumps(results))
    ours = run_json(path, "--gt", gt_path)
    ref = run_json(path, "--gt", gt_path, "--evaluator", "lvis")
    for key in ("AP", "APr", "APc", "APf", "APb", "bbox/AP", "APs", "bbox/APl"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-10), key
    assert ours["num_detections"] == len(results) and ours["notes"] == []


def test_mmdetection_files_bbox_only_with_a_note(problem, tmp_path):
    _gt, results, gt_path = problem
    bbox = tmp_path / "results.bbox.json"  # mmdetection: boxes alone, pretty-printed here
    bbox.write_text(
        json.dumps([{k: v for k, v in r.items() if k != "segmentation"} for r in results], indent=2)
    )
    segm = tmp_path / "results.segm.json"  # mmdetection's segm file carries boxes too
    segm.write_text(json.dumps(results))
    box_only = run_json(bbox, "--gt", gt_path)
    assert "AP" not in box_only and box_only["APb"] is not None
    assert any("no segmentation" in n for n in box_only["notes"])
    both = run_json(segm, "--gt", gt_path)
    assert both["APb"] == box_only["APb"]
    plain = runner.invoke(app, ["eval", str(bbox), "--gt", str(gt_path)])
    assert plain.exit_code == 0 and "note:" in plain.stderr


def test_box_only_ground_truth_gives_box_ap_with_a_note(problem, tmp_path):
    gt, results, _ = problem
    boxes_only = copy.deepcopy(gt)
    for a in boxes_only["annotations"]:
        del a["segmentation"]
    gt_path = tmp_path / "boxes.json"
    gt_path.write_text(json.dumps(boxes_only))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    out = run_json(path, "--gt", gt_path)
    assert "AP" not in out and any("ground truth has no masks" in n for n in out["notes"])


def test_out_writes_metrics_json_and_iou_type_selects(problem, tmp_path):
    gt, results, gt_path = problem
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "out"
    out.mkdir()
    report = run_json(path, "--gt", gt_path, "--iou-type", "bbox", "--out", out)
    assert "AP" not in report and json.loads((out / "metrics.json").read_text()) == report
    assert report["APb"] == evaluate_results(gt, results, iou_types=("bbox",))["APb"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iou-type", "keypoints"], "--iou-type"),
        (["--evaluator", "coco"], "--evaluator"),
        (["--max-dets", "0"], "--max-dets"),
        (["--out", "/nonexistent/folder"], "--out folder does not exist"),
    ],
)
def test_bad_options_exit_2_with_one_line(problem, tmp_path, args, message):
    _, results, gt_path = problem
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    result = runner.invoke(app, ["eval", str(path), "--gt", str(gt_path), *args])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_results_file_needs_gt(problem, tmp_path):
    _, results, _ = problem
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    result = runner.invoke(app, ["eval", str(path)])
    assert result.exit_code == 2 and "needs --gt" in result.stderr


def test_evaluating_a_json_file_does_not_import_torch(problem, tmp_path):
    _, results, gt_path = problem
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    code = (
        "import sys\n"
        "from gumbel_analysis.cli.app import main\n"
        f"sys.argv = ['gumbel', 'eval', {str(path)!r}, '--gt', {str(gt_path)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('no torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "no torch" in out.stdout and '"APb"' in out.stdout


def test_other_data_never_replaces_the_runs_own_files(tmp_path):
    from gumbel_analysis.engine.inference import output_paths

    run = RunLayout(tmp_path / "run")
    own = output_paths(run, _variant(None), None)
    assert own.results == run.results and own.metrics == run.metrics
    assert output_paths(run, _variant("data/lvis/"), None) == own
    other = output_paths(run, _variant("data/other set"), None)
    assert other.results.name == "results.other_set.json"
    assert other.metrics.name == "metrics.other_set.json"
    assert other.results.parent == run.root
    out = output_paths(run, _variant("data/other"), Path("elsewhere"))
    assert out.results == Path("elsewhere/results.json")


def test_a_read_only_output_folder_is_refused_before_inference(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    from gumbel_analysis.errors import InputError
    from gumbel_analysis.io import check_writable_folder

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(InputError, match="not writable"):
        check_writable_folder(folder)


def _variant(data):
    """The evaluation's variant for a run trained on ``data/lvis``, evaluated on ``data``."""
    from gumbel_analysis.engine.inference import variant_name
    from gumbel_analysis.spec.config import TrainConfig

    return variant_name(TrainConfig(data="data/lvis"), data, {})

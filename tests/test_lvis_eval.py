"""The fast evaluator against the official lvis-api ``LVISEval`` on generated LVIS problems."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from lvis_problems import make_problem

from gumbel_analysis.evaluation import compat, lvis_eval
from gumbel_analysis.evaluation.results import results_from_entries

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
]


def reference(gt: dict, results: list[dict], iou_type: str, max_dets: int) -> dict:
    region = "bbox" if iou_type == "bbox" else "segmentation"  # segm: areas from the masks
    entries = [
        {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
         region: r[region]}
        for r in results
    ]  # fmt: skip
    return compat.lvis_api_eval(copy.deepcopy(gt), entries, iou_type, max_dets)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_every_metric_equals_lvis_eval(seed, iou_type):
    gt, results = make_problem(seed)
    max_dets = 10 if seed % 2 else 300  # the per-image cut bites on odd seeds
    ours = lvis_eval.evaluate(
        lvis_eval.load_ground_truth(gt), results_from_entries(results), iou_type, max_dets=max_dets
    )
    ref = reference(gt, results, iou_type, max_dets)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12, rel=0), key
    assert 0 < ours["AP"] < 1


def test_the_generated_problems_hold_every_lvis_rule():
    """The comparison above is only as good as the problems: each rule must be exercised."""
    gt, results = make_problem(1)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    pos = {(a["image_id"], a["category_id"]) for a in gt["annotations"] if a["area"] > 0}
    neg = {(im["id"], c) for im in gt["images"] for c in im["neg_category_ids"]}
    nel = {(im["id"], c) for im in gt["images"] for c in im["not_exhaustive_category_ids"]}
    keys = [(r["image_id"], r["category_id"]) for r in results]
    assert max(len(v) for v in by_image.values()) > 10  # top-k cut at max_dets=10
    assert sum(k in neg for k in keys) and sum(k in nel for k in keys)
    assert sum(k not in pos and k not in neg for k in keys)  # unverified categories
    assert len({r["score"] for r in results}) < len(results) / 3  # score ties
    assert {im["id"] for im in gt["images"]} - {a["image_id"] for a in gt["annotations"]}
    assert any(a["area"] == 0 for a in gt["annotations"])
    assert any(a.get("ignore") for a in gt["annotations"])
    assert any(r["bbox"][2] == 0 for r in results)  # zero-area detections
    assert {f for f in (c["frequency"] for c in gt["categories"])} == {"r", "c", "f"}
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2


def test_segm_takes_object_sizes_from_the_masks_not_the_boxes():
    """detectron2's convention: an object's size range comes from its mask for segm."""
    gt, results = make_problem(2)
    g = lvis_eval.load_ground_truth(gt)
    dets = results_from_entries(results)
    ours = lvis_eval.evaluate(g, dets, "segm", max_dets=300)
    # give every detection a box far from its mask: segm must not change
    moved = [{**r, "bbox": [0.0, 0.0, 150.0, 150.0]} for r in results]
    assert lvis_eval.evaluate(g, results_from_entries(moved), "segm", max_dets=300) == ours
    assert lvis_eval.evaluate(g, results_from_entries(moved), "bbox", max_dets=300) != (
        lvis_eval.evaluate(g, dets, "bbox", max_dets=300)
    )


def test_no_detections_gives_zero_where_defined():
    gt, _ = make_problem(4)
    empty = results_from_entries([])
    metrics = lvis_eval.evaluate(lvis_eval.load_ground_truth(gt), empty, "bbox")
    assert all(v in (0.0, -1.0) for v in metrics.values())
    assert metrics["AP"] == 0.0


def test_small_batches_give_the_same_matching(monkeypatch):
    gt, results = make_problem(5)
    g, dets = lvis_eval.load_ground_truth(gt), results_from_entries(results)
    whole = lvis_eval.evaluate(g, dets, "bbox")
    monkeypatch.setattr(lvis_eval, "_BATCH_ELEMENTS", 1)  # one image per batch
    assert lvis_eval.evaluate(g, dets, "bbox") == whole
    assert np.isfinite(list(whole.values())).all()

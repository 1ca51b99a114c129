"""LVIS evaluation: results conversion, the numpy 2 shim and AP against hand-computed values."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from gumbel_analysis.engine.evaluate import (
    BOX_PREFIX,
    METRIC_NAMES,
    detections_to_results,
    evaluate_results,
    metrics_table,
    write_results,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation.compat import load_lvis, patch_lvis_numpy

# pycocotools 2.0 decode on numpy 2; lvis's Logger.warn: both noise from the reference libraries
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
]

SIZE = 64
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def square(ann_id: int, image_id: int, category_id: int, x: int, y: int, side: int) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, side, side],
        "area": side * side,
        "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
    }


def lvis_gt(squares: list[tuple], negatives: dict[int, list[int]], num_images: int) -> dict:
    """LVIS dict of 64x64 images; categories 1 (rare), 2 (common), 3 (frequent)."""
    return {
        "images": [
            {
                "id": i,
                "height": SIZE,
                "width": SIZE,
                "neg_category_ids": negatives.get(i, []),
                "not_exhaustive_category_ids": [],
            }
            for i in range(1, num_images + 1)
        ],
        "categories": [
            {"id": 1, "name": "rare", "frequency": "r"},
            {"id": 2, "name": "common", "frequency": "c"},
            {"id": 3, "name": "frequent", "frequency": "f"},
        ],
        "annotations": [square(k + 1, *s) for k, s in enumerate(squares)],
    }


@pytest.fixture
def gt() -> dict:
    """Four images, small (< 32²) and medium squares, no large object."""
    squares = [
        (1, 3, 4, 4, 20),
        (1, 1, 28, 28, 34),
        (2, 2, 10, 10, 40),
        (2, 3, 0, 0, 8),
        (3, 3, 20, 5, 30),
        (3, 2, 2, 40, 16),
        (4, 1, 12, 12, 36),
    ]
    return lvis_gt(squares, {1: [2], 4: [2, 3]}, num_images=4)


@pytest.fixture
def tiny_gt() -> dict:
    """Image 1: a rare square, category 2 verified absent; image 2: a common and a frequent one."""
    squares = [(1, 1, 10, 10, 40), (2, 2, 5, 5, 30), (2, 3, 30, 30, 20)]
    return lvis_gt(squares, {1: [2]}, num_images=2)


def gt_mask(ann: dict) -> np.ndarray:
    """The ground truth's mask, rasterised by pycocotools (independently of lvis)."""
    rles = mask_utils.frPyObjects(ann["segmentation"], SIZE, SIZE)
    return mask_utils.decode(mask_utils.merge(rles)).astype(np.float32)


def det(image_id: int, category_id: int, box_xywh, score: float, mask=None) -> dict:
    """One LVIS result entry with a box (and an RLE mask, by default the box filled)."""
    x, y, w, h = box_xywh
    if mask is None:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(v) for v in box_xywh],
        "score": score,
        "segmentation": rle,
    }


def perfect_outputs(gt: dict) -> tuple[list[dict], list[int]]:
    """torchvision-style outputs that reproduce the ground truth exactly, score 1."""
    outputs, image_ids = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        outputs.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor([a["category_id"] for a in anns]),  # ids 1..3 = labels
                "scores": torch.ones(len(anns)),
                "masks": torch.from_numpy(np.stack([gt_mask(a) for a in anns]))[:, None],
            }
        )
        image_ids.append(image["id"])
    return outputs, image_ids


def evaluate_quietly(*args, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warning from lvis either
        return evaluate_results(*args, **kwargs)


# -- the numpy 2 shim ---------------------------------------------------------------------------


def test_lvis_eval_needs_the_shim_on_numpy_2(gt, tmp_path):
    assert not hasattr(np, "float")  # numpy 2: the alias lvis uses is gone
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    outputs, image_ids = perfect_outputs(gt)
    write_results(results_path, detections_to_results(outputs, image_ids, [1, 2, 3]))
    script = (
        "import sys, lvis\n"
        "ev = lvis.LVISEval(lvis.LVIS(sys.argv[1]), sys.argv[2], 'bbox')\n"
        "try:\n    ev.run()\nexcept AttributeError as err:\n    print(err); sys.exit(3)\n"
    )
    unpatched = subprocess.run(
        [sys.executable, "-c", script, str(gt_path), str(results_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unpatched.returncode == 3, unpatched.stderr
    assert "'float'" in unpatched.stdout

    import lvis

    patch_lvis_numpy()
    evaluator = lvis.LVISEval(lvis.LVIS(str(gt_path)), str(results_path), "bbox")
    evaluator.run()
    assert evaluator.results["AP"] == pytest.approx(1.0)
    assert not hasattr(np, "float")  # numpy itself is untouched


# -- detections_to_results ----------------------------------------------------------------------


def test_detections_to_results_boxes_labels_scores_and_masks():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 1, 20, 30, generator=generator)
    output = {
        "boxes": torch.tensor([[1.0, 2.0, 11.5, 7.25], [0.0, 0.0, 30.0, 20.0], [5, 5, 6, 9]]),
        "labels": torch.tensor([2, 1, 3]),
        "scores": torch.tensor([0.9, 0.123456789, 0.3]),
        "masks": masks,
    }
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
    results = detections_to_results([output, empty], [42, 43], [7, 11, 30])

    assert [r["image_id"] for r in results] == [42, 42, 42]
    assert [r["category_id"] for r in results] == [11, 7, 30]  # label l -> category_ids[l - 1]
    assert results[0]["bbox"] == [1.0, 2.0, 10.5, 5.25]
    assert results[1]["bbox"] == [0.0, 0.0, 30.0, 20.0]
    assert results[2]["bbox"] == [5.0, 5.0, 1.0, 4.0]
    for result, score in zip(results, output["scores"], strict=True):
        assert np.float32(result["score"]) == score.item()  # float32 value kept exactly
    assert len(repr(results[1]["score"])) <= len("0.12345679")  # and written compactly

    for k, result in enumerate(results):
        rle = result["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [20, 30]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded, (masks[k, 0] > 0.5).numpy())
    json.dumps(results)  # plain Python types only


def test_detections_to_results_numpy_threshold_and_no_masks():
    masks = np.array([[[0.2, 0.7], [0.5, 0.9]]], dtype=np.float32)  # [K, H, W] also accepted
    output = {"boxes": np.array([[0, 0, 2, 2]]), "labels": [1], "scores": [0.5], "masks": masks}
    [low] = detections_to_results([output], [1], [5], mask_threshold=0.1)
    [high] = detections_to_results([output], [1], [5], mask_threshold=0.6)
    decode = lambda r: mask_utils.decode({**r, "counts": r["counts"].encode()})  # noqa: E731
    np.testing.assert_array_equal(decode(low["segmentation"]), masks[0] > 0.1)
    np.testing.assert_array_equal(decode(high["segmentation"]), masks[0] > 0.6)
    del output["masks"]
    [no_mask] = detections_to_results([output], [1], [5])
    assert "segmentation" not in no_mask


def test_detections_to_results_thresholds_on_the_device_path():
    """Tensors numpy cannot read (bfloat16; CUDA alike) are thresholded by torch: same RLE."""
    generator = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 1, 9, 7, generator=generator)
    output = {"boxes": torch.zeros(4, 4), "labels": torch.ones(4), "scores": torch.ones(4)}
    on_cpu = detections_to_results([{**output, "masks": masks}], [1], [1])
    masks_bf16 = masks.to(torch.bfloat16)
    via_torch = detections_to_results([{**output, "masks": masks_bf16}], [1], [1])
    for a, b, mask in zip(on_cpu, via_torch, masks_bf16, strict=True):
        expected = mask_utils.encode(np.asfortranarray((mask[0] > 0.5).numpy().astype(np.uint8)))
        assert b["segmentation"]["counts"] == expected["counts"].decode()
        assert a["segmentation"]["size"] == b["segmentation"]["size"] == [9, 7]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"boxes": [[0, 0, 1, 1]], "labels": [0], "scores": [1.0]}, "labels must be in 1..3"),
        ({"boxes": [[0, 0, 1, 1]], "labels": [4], "scores": [1.0]}, "labels must be in 1..3"),
        ({"boxes": [[0, 0, 1, 1]], "labels": [1, 2], "scores": [1.0]}, "1 boxes, 2 labels"),
        (
            {"boxes": [[0, 0, 1, 1]], "labels": [1], "scores": [1.0], "masks": np.zeros((2, 4, 4))},
            "masks must be",
        ),
    ],
)
def test_detections_to_results_rejects_bad_outputs(output, message):
    with pytest.raises(InputError, match=message):
        detections_to_results([output], [1], [1, 2, 3])


def test_detections_to_results_needs_one_image_id_per_output():
    with pytest.raises(InputError, match="2 outputs for 1 image ids"):
        detections_to_results([{}, {}], [1], [1])


# -- evaluate_results ---------------------------------------------------------------------------


def test_perfect_detections_score_100_and_undefined_metrics_are_none(gt):
    outputs, image_ids = perfect_outputs(gt)
    results = detections_to_results(outputs, image_ids, [1, 2, 3])
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    metrics = evaluate_quietly(gt, results)

    expected_keys = [*METRIC_NAMES, "APb", *(BOX_PREFIX + m for m in METRIC_NAMES)]
    assert list(metrics) == [*expected_keys, "num_detections"]
    assert metrics["num_detections"] == len(gt["annotations"])
    for prefix in ("", BOX_PREFIX):
        # no ground truth object is large (> 96²): LVIS's -1 becomes None
        assert metrics[prefix + "APl"] is None
        for name in set(METRIC_NAMES) - {"APl"}:
            assert metrics[prefix + name] == pytest.approx(100.0), prefix + name
    assert metrics["APb"] == metrics["bbox/AP"]
    assert gt == gt_before and results == results_before  # inputs are not modified


def test_ap_is_one_over_the_rank_of_the_first_match(tiny_gt):
    """One ground truth: precision at every recall level is 1 / rank of its match (Sec. 4)."""
    right = det(1, 1, (10, 10, 40, 40), 0.5)
    others = [det(2, 2, (5, 5, 30, 30), 1.0), det(2, 3, (30, 30, 20, 20), 1.0)]
    for num_wrong in (0, 1, 3):
        # wrong boxes of the rare category, scored above the right one, overlapping nothing
        wrong = [det(1, 1, (0, 52 - 4 * k, 4, 4), 0.9 - 0.1 * k) for k in range(num_wrong)]
        metrics = evaluate_quietly(tiny_gt, [*wrong, right, *others])
        for prefix in ("", BOX_PREFIX):
            assert metrics[prefix + "APr"] == pytest.approx(100.0 / (num_wrong + 1))
            assert metrics[prefix + "APc"] == pytest.approx(100.0)
            expected_ap = (100.0 / (num_wrong + 1) + 200.0) / 3  # mean over the 3 categories
            assert metrics[prefix + "AP"] == pytest.approx(expected_ap)
    # keeping only the top detection of each image drops the right one when it ranks second
    wrong = det(1, 1, (0, 52, 4, 4), 0.9)
    assert evaluate_quietly(tiny_gt, [wrong, right, *others], max_dets=1)["APr"] == 0.0


@pytest.mark.parametrize("shift", [0, 8, 14, 20])
def test_ap_counts_the_iou_thresholds_a_shifted_detection_passes(tiny_gt, shift):
    box = (10 + shift, 10, 40, 40)  # ground truth (10, 10, 40, 40), moved right
    shifted_mask = np.zeros((SIZE, SIZE), np.float32)
    shifted_mask[:, shift:] = gt_mask(tiny_gt["annotations"][0])[:, : SIZE - shift]
    others = [det(2, 2, (5, 5, 30, 30), 1.0), det(2, 3, (30, 30, 20, 20), 1.0)]
    metrics = evaluate_quietly(tiny_gt, [det(1, 1, box, 1.0, shifted_mask), *others])

    box_iou = (40 - shift) * 40 / (2 * 40 * 40 - (40 - shift) * 40)
    gt_pixels = gt_mask(tiny_gt["annotations"][0]).astype(bool)
    mask_iou = (gt_pixels & (shifted_mask > 0)).sum() / (gt_pixels | (shifted_mask > 0)).sum()
    for prefix, iou in (("", mask_iou), (BOX_PREFIX, box_iou)):
        # a single match is either perfect (precision 1) or absent at each threshold
        expected = 100.0 * np.mean(iou + 1e-10 >= IOU_THRESHOLDS)
        assert metrics[prefix + "APr"] == pytest.approx(expected)
        assert metrics[prefix + "AP50"] == pytest.approx((100.0 * (iou >= 0.5) + 200.0) / 3)
    if shift == 20:
        assert metrics["APr"] == 0.0 and metrics["bbox/APr"] == 0.0


def test_wrong_class_counts_only_where_verified_absent(tiny_gt):
    """LVIS is federated: a false positive counts only for a category checked in that image."""
    exact = [
        det(1, 1, (10, 10, 40, 40), 0.5),
        det(2, 2, (5, 5, 30, 30), 0.5),
        det(2, 3, (30, 30, 20, 20), 0.5),
    ]
    # image 1 lists category 2 as absent: the common category's ranking gets a false positive
    verified = evaluate_quietly(tiny_gt, [det(1, 2, (10, 10, 40, 40), 0.9), *exact])
    assert verified["APc"] == pytest.approx(50.0)
    assert verified["AP"] == pytest.approx((100.0 + 50.0 + 100.0) / 3)
    # nothing is known about category 3 in image 1: the detection is not judged
    unverified = evaluate_quietly(tiny_gt, [det(1, 3, (10, 10, 40, 40), 0.9), *exact])
    assert unverified["AP"] == pytest.approx(100.0)


def test_same_numbers_as_the_plain_lvis_eval(gt):
    """The skipped pairs and categories change nothing: random detections, every metric."""
    import lvis

    patch_lvis_numpy()
    rng = np.random.default_rng(0)
    results = []
    for image_id in range(1, 5):
        for _ in range(25):
            x, y = rng.integers(0, 40, 2)
            w, h = rng.integers(4, 40, 2)
            box = (int(x), int(y), int(min(w, SIZE - x)), int(min(h, SIZE - y)))
            category = int(rng.integers(1, 4))
            results.append(det(image_id, category, box, float(rng.random())))
    gt["categories"].append({"id": 4, "name": "unseen", "frequency": "r"})  # no ground truth
    gt["images"][0]["neg_category_ids"].append(4)
    results.append(det(1, 4, (0, 0, 10, 10), 0.99))
    ours = evaluate_quietly(gt, results)
    for iou_type, prefix in (("segm", ""), ("bbox", BOX_PREFIX)):
        region = "segmentation" if iou_type == "segm" else "bbox"
        keys = ("image_id", "category_id", "score", region)
        dts = [{k: r[k] for k in keys} for r in results]
        lvis_gt_api = load_lvis(copy.deepcopy(gt))
        plain = lvis.LVISEval(lvis_gt_api, lvis.LVISResults(lvis_gt_api, dts), iou_type)
        plain.run()
        for name in METRIC_NAMES:
            value = plain.results[name]
            expected = None if value == -1 else 100.0 * value
            assert ours[prefix + name] == pytest.approx(expected), prefix + name
    assert 0 < ours["AP"] < 100  # a case where ranking matters


def test_empty_results_score_zero_where_defined(gt):
    with pytest.warns(UserWarning, match="no detections"):
        metrics = evaluate_results(gt, [])
    perfect = evaluate_quietly(gt, detections_to_results(*perfect_outputs(gt), [1, 2, 3]))
    assert metrics["num_detections"] == 0
    assert set(metrics) == set(perfect)
    for key, value in perfect.items():
        if key != "num_detections":
            assert metrics[key] == (None if value is None else 0.0), key


def test_results_without_masks_give_box_metrics_only(gt):
    results = detections_to_results(*perfect_outputs(gt), [1, 2, 3])
    for r in results:
        del r["segmentation"]
    with pytest.warns(UserWarning, match="no segmentation: mask AP is not evaluated"):
        metrics = evaluate_results(gt, results)
    assert "AP" not in metrics and metrics["APb"] == pytest.approx(100.0)
    assert set(metrics) == {"APb", "num_detections", *(BOX_PREFIX + m for m in METRIC_NAMES)}


def test_box_only_evaluation_and_path_ground_truth(gt, tmp_path):
    for image in gt["images"]:  # optional in the file: absent means none
        del image["neg_category_ids"], image["not_exhaustive_category_ids"]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(gt))
    results = detections_to_results(*perfect_outputs(gt), [1, 2, 3])
    for source in (path, str(path), gt):
        metrics = evaluate_quietly(source, results, iou_types=("bbox",))
        assert "AP" not in metrics and metrics["bbox/APr"] == pytest.approx(100.0)


def test_box_metrics_from_mask_only_results(gt):
    """Results with masks and no boxes (valid LVIS results): boxes come from the masks."""
    results = detections_to_results(*perfect_outputs(gt), [1, 2, 3])
    for r in results:
        del r["bbox"]
    metrics = evaluate_quietly(gt, results)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["APb"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 99}, r"1 image id\(s\) absent from the ground truth, e.g. 99"),
        ({"category_id": 7}, r"1 category id\(s\) absent from the ground truth, e.g. 7"),
        ({"score": None}, "detection 0 has score None"),
        ({"image_id": None}, "detection 0 has image_id None"),
    ],
)
def test_unknown_ids_and_malformed_results_are_input_errors(gt, change, message):
    results = [{**det(1, 1, (28, 28, 34, 34), 0.5), **change}]
    with pytest.raises(InputError, match=message):
        evaluate_results(gt, results)


def test_bad_arguments_are_input_errors(gt):
    result = det(1, 1, (28, 28, 34, 34), 0.5)
    with pytest.raises(InputError, match="IoU types"):
        evaluate_results(gt, [result], iou_types=("keypoints",))
    with pytest.raises(InputError, match="max_dets"):
        evaluate_results(gt, [result], max_dets=0)
    small = {**result, "segmentation": {**result["segmentation"], "size": [32, 32]}}
    with pytest.raises(InputError, match="mask size"):
        evaluate_results(gt, [small])
    no_score = {k: v for k, v in result.items() if k != "score"}
    with pytest.raises(InputError, match="detection 0 has no score"):
        evaluate_results(gt, [no_score])
    with pytest.raises(InputError, match="neither a bbox"):
        bare = {k: v for k, v in result.items() if k not in ("bbox", "segmentation")}
        evaluate_results(gt, [result, bare])
    del gt["categories"][0]["frequency"]
    with pytest.raises(InputError, match="frequency group"):
        evaluate_results(gt, [result])
    with pytest.raises(InputError, match="not an LVIS annotation file"):
        evaluate_results({"images": []}, [result])


def test_progress_runs_to_completion_and_lvis_stays_quiet(gt, capfd):
    results = detections_to_results(*perfect_outputs(gt), [1, 2, 3])
    with Progress(disable=True) as progress:
        evaluate_quietly(gt, results, progress=progress)
    assert [t.description for t in progress.tasks] == [
        "LVIS segm evaluation",
        "LVIS bbox evaluation",
    ]
    assert all(t.finished for t in progress.tasks)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


# -- write_results and metrics_table ------------------------------------------------------------


def test_write_results_is_readable_by_lvis_results(gt, tmp_path):
    import lvis

    results = detections_to_results(*perfect_outputs(gt), [1, 2, 3])
    path = tmp_path / "results.json"
    write_results(path, results)
    assert json.loads(path.read_text()) == results
    assert " " not in path.read_text()  # compact
    loaded = lvis.LVISResults(load_lvis(copy.deepcopy(gt)), str(path))
    assert len(loaded.get_ann_ids()) == len(results)
    assert evaluate_quietly(gt, json.loads(path.read_text())) == evaluate_quietly(gt, results)


def test_write_results_leaves_no_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(TypeError):
        write_results(path, [{"image_id": 1, "score": object()}])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="output folder does not exist"):
        write_results(tmp_path / "missing" / "results.json", [])


def test_metrics_table_shows_mask_and_box_columns(gt):
    metrics = evaluate_quietly(gt, detections_to_results(*perfect_outputs(gt), [1, 2, 3]))
    console = Console(record=True, width=140)
    console.print(metrics_table(metrics, "LVIS val"))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert set(METRIC_NAMES) <= set(rows)
    assert rows["AP"].count("100.0") == 2  # mask and box
    assert rows["APl"].split("│")[3].strip() == "-"  # undefined
    assert f"{len(gt['annotations'])} detections" in text
    box_only = {k: v for k, v in metrics.items() if k.startswith(BOX_PREFIX)}
    console = Console(record=True, width=140)
    console.print(metrics_table(box_only, "boxes"))
    rows = [line.split("│") for line in console.export_text().splitlines() if "│" in line]
    assert all(row[3].strip() == "" for row in rows[1:])  # no mask values


def test_mask_ap_takes_object_sizes_from_the_masks(tiny_gt):
    """As detectron2 evaluates LVIS: a false positive's size range comes from its mask, not box."""
    exact = [
        det(1, 1, (10, 10, 40, 40), 0.5),
        det(2, 2, (5, 5, 30, 30), 0.5),
        det(2, 3, (30, 30, 20, 20), 0.5),
    ]
    small_mask = np.zeros((SIZE, SIZE), np.float32)
    small_mask[0:10, 50:60] = 1  # 100 pixels: small; its (wrong) box is medium-sized
    false_positive = det(2, 3, (0, 0, 40, 40), 0.9, small_mask)
    metrics = evaluate_quietly(tiny_gt, [false_positive, *exact])
    # small objects: categories 2 (30²) and 3 (20²); the false positive ranks first in 3
    assert metrics["APs"] == pytest.approx((100.0 + 50.0) / 2)
    assert metrics["bbox/APs"] == pytest.approx(100.0)  # as a box it is medium: not in APs

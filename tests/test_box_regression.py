"""The box-AP diagnosis (issue 21): oracle-class regression, gradient split, boxes against their
masks, and AP per IoU threshold; each against an independent computation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from lvis_problems import _rect_mask, _rle, make_problem
from torch import nn

from gumbel_analysis.analysis.box_regression import (
    RegressionQuality,
    box_fit,
    gradient_split,
    mask_boxes,
    regression_quality,
)
from gumbel_analysis.evaluation import lvis_eval
from gumbel_analysis.evaluation.results import results_from_entries
from gumbel_analysis.losses import build_loss
from gumbel_analysis.model import PRESETS, build_model
from gumbel_analysis.model.heads import DecoupledBoxHead

C = 3
WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's box coder


class FixedProposals(nn.Module):
    """An RPN stand-in that proposes the given boxes for every image."""

    def __init__(self, boxes: torch.Tensor) -> None:
        super().__init__()
        self.boxes = boxes

    def forward(self, images, features, targets=None):
        return [self.boxes.clone() for _ in images.image_sizes], {}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes, in float64."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _decode(box: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """torchvision's BoxCoder.decode of one box, written out in float64."""
    dx, dy, dw, dh = (d / w for d, w in zip(deltas, WEIGHTS, strict=True))
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
    cx, cy, w, h = cx + dx * w, cy + dy * h, w * math.exp(dw), h * math.exp(dh)
    return np.array([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])


def _model_with_fixed_proposals(proposals: torch.Tensor, loss_name: str = "sigmoid"):
    model = build_model("tiny", C, build_loss(loss_name, C))
    model.rpn = FixedProposals(proposals)
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.bbox_pred.weight.zero_()
        predictor.cls_score.weight.zero_()
    return model.eval()


PROPOSALS = torch.tensor(
    [[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 100.0, 110.0], [0.0, 0.0, 5.0, 5.0]]
)
TARGET = {
    "boxes": torch.tensor([[12.0, 8.0, 52.0, 48.0], [62.0, 60.0, 100.0, 100.0]]),
    "labels": torch.tensor([2, 1]),
}


def test_regression_quality_matches_an_independent_decode():
    model = _model_with_fixed_proposals(PROPOSALS)
    predictor = model.roi_heads.box_predictor
    bias = {1: (1.0, -0.5, 0.2, 0.0), 2: (0.5, 0.3, -0.1, 0.15)}  # per class (1..C): deltas x W
    with torch.no_grad():
        for label, deltas in bias.items():
            predictor.bbox_pred.bias[4 * (label - 1) : 4 * label] = torch.tensor(deltas)
        predictor.cls_score.bias.fill_(-1.0)
        predictor.cls_score.bias[1] = 2.0  # class 2 (column 1) on top
    image = torch.rand(3, 128, 128)
    quality = regression_quality(model, [([image, image], [TARGET, TARGET])])

    props, gts = PROPOSALS.double().numpy(), TARGET["boxes"].double().numpy()
    expected_before, expected_after, labels = [], [], []
    for p in props:
        ious = [_iou(p, g) for g in gts]
        best = int(np.argmax(ious))
        if ious[best] >= 0.5:
            label = int(TARGET["labels"][best])
            expected_before.append(ious[best])
            expected_after.append(_iou(_decode(p, np.array(bias[label])), gts[best]))
            labels.append(label)
    assert len(labels) == 2  # the third proposal overlaps nothing
    np.testing.assert_allclose(quality.iou_before, expected_before * 2, rtol=1e-6)
    np.testing.assert_allclose(quality.iou_after, expected_after * 2, rtol=1e-5)
    assert quality.classes.tolist() == labels * 2
    assert quality.top_class_right.tolist() == [label == 2 for label in labels] * 2
    bias_of = predictor.cls_score.bias.detach().double()
    np.testing.assert_allclose(
        quality.own_score, [1 / (1 + math.exp(-bias_of[k - 1])) for k in labels * 2], rtol=1e-6
    )
    # two images of two objects each: numbered 0, 1 then 2, 3; proposal i matched object i
    assert quality.objects.tolist() == [0, 1, 2, 3]
    summary = quality.summary({1: "r", 2: "f", 3: "c"})
    assert summary["proposals"] == 4
    assert summary["iou_after"] == pytest.approx(np.mean(expected_after))
    assert summary["iou_after_r"] == pytest.approx(expected_after[labels.index(1)])
    assert "iou_after_c" not in summary  # no proposal of the common class


def test_zero_deltas_leave_the_proposals_in_place():
    model = _model_with_fixed_proposals(PROPOSALS)
    image = torch.rand(3, 128, 128)
    quality = regression_quality(model, [([image], [TARGET])])
    np.testing.assert_allclose(quality.iou_after, quality.iou_before, rtol=1e-6)


def test_score_iou_correlation_is_per_object():
    quality = RegressionQuality(
        iou_before=np.zeros(6),
        iou_after=np.array([0.6, 0.7, 0.8, 0.9, 0.5, 0.7]),
        classes=np.ones(6, dtype=int),
        top_class_right=np.ones(6, dtype=bool),
        own_score=np.array([0.1, 0.5, 0.9, 0.2, 0.8, 0.3]),
        objects=np.array([0, 0, 0, 1, 1, 2]),
    )
    # object 0 ranks in order (+1), object 1 against it (-1), object 2 has one proposal
    assert quality.score_iou_correlation() == pytest.approx(0.0)
    assert math.isnan(replace(quality, objects=np.arange(6)).score_iou_correlation())
    # top-scored: 0.8 (object 0), 0.5 (object 1), 0.7 (object 2); best: 0.8, 0.9, 0.7
    top, best = quality.per_object_iou()
    assert top == pytest.approx((0.8 + 0.5 + 0.7) / 3)
    assert best == pytest.approx((0.8 + 0.9 + 0.7) / 3)


def _train_batches(n: int = 2):
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=gen) for _ in range(2)]
    masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
    masks[0, 8:48, 12:52] = 1
    masks[1, 60:100, 62:100] = 1
    target = {**TARGET, "masks": masks}
    return [(images, [target, target])] * n


def test_gradient_split_separates_the_two_losses():
    torch.manual_seed(0)
    model = build_model("tiny", C, build_loss("gumbel", C))
    split = gradient_split(model, _train_batches())
    assert split["classifier"] > 0 and split["box_reg"] > 0
    assert -1.0 <= split["cosine"] <= 1.0
    assert split["ratio"] == pytest.approx(split["classifier"] / split["box_reg"])

    # The sum of the two losses has the sum of the two gradients: its squared norm is
    # |g_c|^2 + |g_r|^2 + 2 cos |g_c| |g_r|, computed here through one backward of the sum.
    captured = []
    handle = model.roi_heads.box_head.register_forward_hook(lambda _m, _i, o: captured.append(o))
    squared = 0.0
    torch.manual_seed(0)
    for images, targets in _train_batches():
        captured.clear()
        losses = model(images, targets)
        (grad,) = torch.autograd.grad(
            losses["loss_classifier"] + losses["loss_box_reg"], captured[0]
        )
        squared += float((grad.double() ** 2).sum())
    handle.remove()
    c, r = split["classifier"], split["box_reg"]
    assert squared == pytest.approx(c**2 + r**2 + 2 * split["cosine"] * c * r, rel=1e-4)


def test_gradient_split_without_a_regressor_weight_has_no_regression_gradient():
    torch.manual_seed(0)
    model = build_model("tiny", C, build_loss("sigmoid", C))
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.zero_()
    split = gradient_split(model, _train_batches(1))
    assert split["box_reg"] == 0.0 and split["classifier"] > 0
    assert split["ratio"] == math.inf and math.isnan(split["cosine"])


def _entry(image_id, cat, score, box, mask_box, size=(64, 80)):
    return {
        "image_id": image_id,
        "category_id": cat,
        "score": score,
        "bbox": box,
        "segmentation": _rle(_rect_mask(*size, mask_box)),
    }


def _ground_truth(boxes):
    h, w = 64, 80
    return {
        "images": [
            {
                "id": 1,
                "height": h,
                "width": w,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f"},
            {"id": 2, "name": "b", "frequency": "r"},
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "segmentation": _rle(_rect_mask(h, w, box)),
            }
            for k, (cat, box) in enumerate(boxes)
        ],
    }


def test_mask_boxes_are_the_masks_bounding_boxes():
    dets = results_from_entries([_entry(1, 1, 0.9, [0.0, 0.0, 40.0, 40.0], [5, 6, 20, 10])])
    np.testing.assert_array_equal(mask_boxes(dets).bbox, [[5, 6, 20, 10]])
    np.testing.assert_array_equal(dets.bbox, [[0, 0, 40, 40]])  # not modified


def test_box_fit_against_hand_computed_ratios():
    gt = lvis_eval.load_ground_truth(_ground_truth([(1, [10, 10, 20, 20]), (2, [40, 30, 30, 20])]))
    dets = results_from_entries(
        [
            # too wide a box around a mask that fits the object exactly
            _entry(1, 1, 0.9, [10.0, 10.0, 25.0, 20.0], [10, 10, 20, 20]),
            # class 2, exact box, a mask 10 px too short
            _entry(1, 2, 0.5, [40.0, 30.0, 30.0, 20.0], [40, 30, 30, 10]),
            # below the score cut, and a wrong class: both left out
            _entry(1, 1, 0.1, [10.0, 10.0, 20.0, 20.0], [10, 10, 20, 20]),
            _entry(1, 2, 0.9, [10.0, 10.0, 20.0, 20.0], [10, 10, 20, 20]),
        ]
    )
    fit = box_fit(gt, dets, min_score=0.3)
    assert fit["matched"] == 2
    assert fit["box_iou"] == pytest.approx((400 / 500 + 1.0) / 2)
    assert fit["mask_box_iou"] == pytest.approx((1.0 + 300 / 600) / 2)
    assert fit["box_vs_own_mask_iou"] == pytest.approx((400 / 500 + 300 / 600) / 2)
    assert fit["log_width_ratio"] == pytest.approx(math.log(25 / 20) / 2)
    assert fit["log_height_ratio"] == pytest.approx(0.0)


def test_ap_at_iou_gives_ap50_ap75_and_averages_to_ap():
    gt_dict, results = make_problem(3)
    gt = lvis_eval.load_ground_truth(gt_dict)
    dets = results_from_entries(results)
    for iou_type in ("bbox", "segm"):
        summary = lvis_eval.evaluate(gt, dets, iou_type)
        precision, _ = lvis_eval.precision_recall(gt, dets, iou_type)
        per_iou = lvis_eval.ap_at_iou(precision)
        assert per_iou[0] == pytest.approx(summary["AP50"], abs=1e-12)
        assert per_iou[5] == pytest.approx(summary["AP75"], abs=1e-12)
        assert per_iou.mean() == pytest.approx(summary["AP"], abs=1e-12)
        rare = [k for k, f in enumerate(gt.frequency) if f == "r"]
        assert lvis_eval.ap_at_iou(precision, rare).mean() == pytest.approx(
            summary["APr"], abs=1e-12
        )


def test_decoupled_head_sends_each_loss_to_its_own_head():
    torch.manual_seed(0)
    model = build_model("tiny-decoupled", C, build_loss("gumbel", C)).train()
    head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    assert isinstance(head, DecoupledBoxHead) and predictor.decoupled
    (images, targets), *_ = _train_batches(1)
    losses = model(images, targets)
    cls_params = list(head.cls_head.parameters())
    reg_params = list(head.reg_head.parameters())
    from_classes = torch.autograd.grad(
        losses["loss_classifier"], cls_params + reg_params, retain_graph=True, allow_unused=True
    )
    from_boxes = torch.autograd.grad(
        losses["loss_box_reg"], cls_params + reg_params, allow_unused=True
    )
    n = len(cls_params)

    def zero(grads):
        return all(g is None or not g.abs().any() for g in grads)

    assert zero(from_classes[n:]) and not zero(from_classes[:n])
    assert zero(from_boxes[:n]) and not zero(from_boxes[n:])


def test_decoupled_predictor_reads_each_half():
    torch.manual_seed(0)
    model = build_model("tiny-decoupled", C, build_loss("sigmoid", C))
    head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    x = torch.randn(5, PRESETS["tiny"].fpn_channels, 7, 7)
    logits, deltas = predictor(head(x))
    torch.testing.assert_close(logits, predictor.cls_score(head.cls_head(x)))
    torch.testing.assert_close(deltas, predictor.bbox_pred(head.reg_head(x)))
    with pytest.raises(ValueError, match="single box head"):
        replace(PRESETS["cascade-tiny"], decoupled_box_head=True)

"""A trained Mask R-CNN's box regression, measured apart from its classifier (issue 21: why
Gumbel's box AP falls below Sigmoid's on the benchmark while its mask AP rises).

Box AP mixes three things: which objects the classifier finds (recall and ranking), where the
RPN proposes them, and how far the box head moves a proposal onto its object. These functions
take the last two apart from the first:

* :func:`regression_quality` (test mode): every RPN proposal with IoU >= ``match_iou`` to a
  ground-truth box, regressed with *that box's own class* (the oracle class, so the classifier
  plays no part), compared with the box before and after: ``IoU(proposal, gt)`` and
  ``IoU(decode(deltas[gt class], proposal), gt)``. Also the share of such proposals whose
  top-scoring class is the ground truth's, and how well the own-class score ranks them by
  localisation (the rank correlation of score and IoU after regression over the proposals of
  each object, averaged over the objects: NMS keeps the top-scoring box of an object, so a
  classifier that scores loose boxes as high as tight ones costs AP at strict IoU only).
* :func:`mask_boxes` and :func:`box_fit` (a results file): each detection's box against the
  box of its own mask (the mask head draws inside the detection's box, so a mask can only be
  tighter), and the confident detections' boxes against their ground truth: width and height
  ratios. Evaluating box AP with every box replaced by its mask's box tells whether the box
  deficit is the regressor's or the detections'.
* :func:`gradient_split` (training mode): the gradients that the classification loss and the
  box-regression loss each send into the box head's shared representation (the input of the
  classifier and of the regressor), as norms: which of the two shapes the features both read.

Decoding is torchvision's ``BoxCoder`` (weights 10, 10, 5, 5), as the heads decode at test time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pycocotools.mask as mask_utils
import torch
from scipy.stats import spearmanr
from torchvision.ops import box_iou

from gumbel_analysis.evaluation.lvis_eval import GroundTruth
from gumbel_analysis.evaluation.results import Detections
from gumbel_analysis.groups import FREQUENCY_GROUPS


@dataclass(frozen=True)
class RegressionQuality:
    """Per matched proposal (one row each, over all images): the IoU with its ground truth
    before and after the oracle-class regression, the ground truth's class (1..C), whether
    the classifier's top class is that class, the score of that class, and the object (a
    number unique over the images)."""

    iou_before: np.ndarray
    iou_after: np.ndarray
    classes: np.ndarray
    top_class_right: np.ndarray
    own_score: np.ndarray
    objects: np.ndarray

    def score_iou_correlation(self) -> float:
        """Spearman's rank correlation of the own-class score with the IoU after regression,
        within each object with two or more proposals, averaged over those objects (NaN where
        none has; an object whose scores or IoUs are all equal is skipped)."""
        values = []
        for obj in np.unique(self.objects):
            rows = self.objects == obj
            score, iou = self.own_score[rows], self.iou_after[rows]
            if rows.sum() < 2 or np.ptp(score) == 0 or np.ptp(iou) == 0:
                continue
            values.append(float(spearmanr(score, iou).statistic))
        return float(np.mean(values)) if values else float("nan")

    def per_object_iou(self) -> tuple[float, float]:
        """Over the objects, the mean IoU after regression of the object's top-scored proposal
        (own-class score; what class-wise NMS keeps first) and of its best-placed proposal (NaN
        without proposals)."""
        top, best = [], []
        for obj in np.unique(self.objects):
            rows = np.flatnonzero(self.objects == obj)
            top.append(self.iou_after[rows[np.argmax(self.own_score[rows])]])
            best.append(self.iou_after[rows].max())
        if not top:
            return float("nan"), float("nan")
        return float(np.mean(top)), float(np.mean(best))

    def summary(self, frequency: dict[int, str] | None = None) -> dict[str, float | int]:
        """Means over the matched proposals, and by frequency group (``frequency``: class id ->
        "r" / "c" / "f") where given; groups without a proposal are left out."""
        out = _summary(self.iou_before, self.iou_after, self.top_class_right)
        out["score_iou_spearman"] = self.score_iou_correlation()
        out["top_scored_iou"], out["best_iou"] = self.per_object_iou()
        if frequency is not None:
            groups = np.array([frequency.get(int(c), "") for c in self.classes])
            for group in FREQUENCY_GROUPS:
                rows = groups == group
                if rows.any():
                    part = _summary(
                        self.iou_before[rows], self.iou_after[rows], self.top_class_right[rows]
                    )
                    out.update({f"{k}_{group}": v for k, v in part.items()})
        return out


def _summary(before: np.ndarray, after: np.ndarray, right: np.ndarray) -> dict[str, float | int]:
    return {
        "proposals": len(before),
        "iou_before": float(before.mean()) if len(before) else float("nan"),
        "iou_after": float(after.mean()) if len(after) else float("nan"),
        "after_ge_0.75": float((after >= 0.75).mean()) if len(after) else float("nan"),
        "after_ge_0.9": float((after >= 0.9).mean()) if len(after) else float("nan"),
        "top_class_right": float(right.mean()) if len(right) else float("nan"),
    }


@torch.no_grad()
def regression_quality(
    model: torch.nn.Module,
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[dict]]],
    match_iou: float = 0.5,
) -> RegressionQuality:
    """The oracle-class regression of ``model`` (a torchvision ``MaskRCNN`` with this toolkit's
    heads, put in eval mode here) over ``batches`` of (images, targets with ``boxes`` xyxy and
    ``labels`` 1..C): see the module docstring. Proposals are the RPN's test-time ones."""
    model.eval()
    heads = model.roi_heads
    before, after, classes, right, own_scores, objects = [], [], [], [], [], []
    seen = 0  # objects of the earlier images, so that object numbers are unique
    for images, targets in batches:
        images_t, targets_t = model.transform(list(images), [dict(t) for t in targets])
        features = model.backbone(images_t.tensors)
        proposals, _ = model.rpn(images_t, features)
        kept, gt_boxes, gt_labels, gt_objects = [], [], [], []
        for props, target in zip(proposals, targets_t, strict=True):
            if len(target["boxes"]) == 0 or len(props) == 0:
                rows = which = torch.zeros(0, dtype=torch.int64)
            else:
                iou, which = box_iou(props, target["boxes"]).max(dim=1)
                rows = torch.where(iou >= match_iou)[0]
            # one entry per image, empty or not: the RoI pooler reads the list by image
            kept.append(props[rows])
            gt_boxes.append(target["boxes"][which[rows]])
            gt_labels.append(target["labels"][which[rows]])
            gt_objects.append(which[rows] + seen)
            seen += len(target["boxes"])
        if sum(len(k) for k in kept) == 0:
            continue
        pooled = heads.box_roi_pool(features, kept, images_t.image_sizes)
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        decoded = heads.box_coder.decode(box_regression.float(), kept)  # [N, C, 4]
        props, gts, labels = torch.cat(kept), torch.cat(gt_boxes), torch.cat(gt_labels)
        own = decoded[torch.arange(len(labels)), labels - 1]
        before.append(_paired_iou(props, gts))
        after.append(_paired_iou(own, gts))
        scores = heads.classification_loss.scores(class_logits.float())
        right.append((scores.argmax(dim=1) + 1 == labels).numpy())
        own_scores.append(scores[torch.arange(len(labels)), labels - 1].double().numpy())
        classes.append(labels.numpy())
        objects.append(torch.cat(gt_objects).numpy())
    if not before:
        empty = np.zeros(0)
        ints = empty.astype(int)
        return RegressionQuality(empty, empty, ints, empty.astype(bool), empty, ints)
    return RegressionQuality(
        *(np.concatenate(x) for x in (before, after, classes, right, own_scores, objects))
    )


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """IoU of row i of ``a`` with row i of ``b`` (xyxy)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return (inter / (area_a + area_b - inter)).double().numpy()


def gradient_split(
    model: torch.nn.Module,
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[dict]]],
    seed: int = 0,
) -> dict[str, float]:
    """Norms of the gradients of ``loss_classifier`` and ``loss_box_reg`` with respect to the box
    head's output (the representation both the classifier and the regressor read), summed over
    ``batches`` in training mode (torchvision's RoI sampling, seeded by ``seed``); the weights are
    not changed, but BatchNorm's running statistics are (use a copy of a model you keep).

    Returns the root of the summed squared norms of each (``classifier``, ``box_reg``), their
    ratio, and the cosine of the two gradients (summed inner products over the product of
    norms)."""
    torch.manual_seed(seed)
    model.train()
    captured: list[torch.Tensor] = []
    handle = model.roi_heads.box_head.register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    sq_cls = sq_reg = dot = 0.0
    try:
        for images, targets in batches:
            captured.clear()
            losses = model(list(images), [dict(t) for t in targets])
            (rep,) = captured
            (g_cls,) = torch.autograd.grad(losses["loss_classifier"], rep, retain_graph=True)
            (g_reg,) = torch.autograd.grad(losses["loss_box_reg"], rep)
            g_cls, g_reg = g_cls.double(), g_reg.double()
            sq_cls += float((g_cls**2).sum())
            sq_reg += float((g_reg**2).sum())
            dot += float((g_cls * g_reg).sum())
    finally:
        handle.remove()
    norm_cls, norm_reg = sq_cls**0.5, sq_reg**0.5
    return {
        "classifier": norm_cls,
        "box_reg": norm_reg,
        "ratio": norm_cls / norm_reg if norm_reg > 0 else float("inf"),
        "cosine": dot / (norm_cls * norm_reg) if norm_cls > 0 and norm_reg > 0 else float("nan"),
    }


def mask_boxes(dets: Detections) -> Detections:
    """``dets`` with every box replaced by its own mask's bounding box (xywh, pycocotools'
    ``toBbox``); entries without a mask keep their box."""
    boxes = np.array(dets.bbox, dtype=np.float64, copy=True)
    with_mask = np.flatnonzero(dets.has_mask)
    if len(with_mask):
        boxes[with_mask] = mask_utils.toBbox(dets.rles(with_mask))
    return replace(dets, bbox=boxes)


def _xywh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xywh boxes."""
    lo = np.maximum(a[:, :2], b[:, :2])
    hi = np.minimum(a[:, :2] + a[:, 2:], b[:, :2] + b[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=1)
    union = a[:, 2:].prod(axis=1) + b[:, 2:].prod(axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_fit(
    gt: GroundTruth, dets: Detections, min_score: float = 0.3, match_iou: float = 0.5
) -> dict[str, float | int]:
    """The detections scoring at least ``min_score`` that overlap a ground truth of their own
    class in their image (box IoU >= ``match_iou``, the best such ground truth): their mean box
    IoU with it, the mean log ratios of width and height (box over ground truth: above 0 is too
    large), the IoU of each box with its own mask's box, and the IoU the mask's box would have
    with the ground truth."""
    rows = np.flatnonzero(dets.score >= min_score)
    own_mask = mask_boxes(dets).bbox
    image_index = {int(i): k for k, i in enumerate(gt.image_ids.tolist())}
    cat_index = {int(c): k for k, c in enumerate(gt.cat_ids.tolist())}
    by_key: dict[tuple[int, int], list[int]] = {}
    for a in range(len(gt.ann_ids)):
        by_key.setdefault((int(gt.ann_image[a]), int(gt.ann_cat[a])), []).append(a)
    box, mask_box, truth = [], [], []
    for d in rows.tolist():
        key = (image_index[int(dets.image_id[d])], cat_index[int(dets.category_id[d])])
        anns = by_key.get(key)
        if not anns:
            continue
        candidates = gt.ann_bbox[anns]
        ious = _xywh_iou(np.repeat(dets.bbox[d][None], len(anns), 0), candidates)
        best = int(np.argmax(ious))
        if ious[best] >= match_iou:
            box.append(dets.bbox[d])
            mask_box.append(own_mask[d])
            truth.append(candidates[best])
    if not box:
        return {"matched": 0}
    box, mask_box, truth = np.array(box), np.array(mask_box), np.array(truth)
    return {
        "matched": len(box),
        "box_iou": float(_xywh_iou(box, truth).mean()),
        "mask_box_iou": float(_xywh_iou(mask_box, truth).mean()),
        "box_vs_own_mask_iou": float(_xywh_iou(box, mask_box).mean()),
        "log_width_ratio": float(np.log(box[:, 2] / truth[:, 2]).mean()),
        "log_height_ratio": float(np.log(box[:, 3] / truth[:, 3]).mean()),
    }

"""Cascade Mask R-CNN's RoI heads (Cai and Vasconcelos, 2019) and Hybrid Task Cascade's
(:class:`HTCRoIHeads`, Chen et al., 2019) with the losses of the registry.

A cascade refines its boxes in stages, each trained at a stricter IoU. Stage ``k`` has its own
box head, classifier (built and initialised by the chosen loss: the Gumbel bias of Sec. 1.1 in
every stage; statistics-keeping losses keep one set per stage), class-agnostic box regression,
box coder weights and loss weight, as mmdetection's and detectron2's reference configurations:

| stage | IoU | box-coder weights | loss weight |
| --- | --- | --- | --- |
| 1 | 0.5 | (10, 10, 5, 5) | 1 |
| 2 | 0.6 | (20, 20, 10, 10) | 0.5 |
| 3 | 0.7 | (30, 30, 15, 15) | 0.25 |

**Training.** Stage 1 samples the RPN's proposals and the ground truths as Mask R-CNN does. Each
later stage takes the previous stage's sampled RoIs, less those that were ground-truth boxes,
moved by its (detached) regression and clipped to the image, adds the ground truths again,
matches them at its own IoU and samples them (512 per image, a quarter positive), as
mmdetection's ``CascadeRoIHead``. ``loss_classifier`` and ``loss_box_reg`` are the stages'
losses, weighted and summed; the mask head is trained on the last stage's positives
(detectron2's cascade keeps one mask head, on the last stage).

**Inference.** The proposals pass the stages in turn, each moving the boxes for the next; a
class's score is the mean of the stages' scores, each computed by its loss on its own input
boxes (detectron2; mmdetection averages the logits before the softmax, which reads nothing
for a Sigmoid or Gumbel head); the boxes are the last stage's. Then the threshold, NMS and the
top detections as Mask R-CNN, and the masks on the final boxes.

The last stage is the base ``RoIHeads``' own ``box_head``, ``box_predictor``, matcher and box
coder, and its loss the heads' ``classification_loss``: anything that reads "the" classifier
sees the last stage. The gradient recorder sees ``recorded_stage`` (``--grad-stage``; default
the last). A cascade of one stage is Mask R-CNN's head with
class-agnostic regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.model.heads import (
    LossRoIHeads,
    at_least_float32,
    box_regression_loss,
    foreground,
    mask_loss,
    matched_instances,
    to_loss_labels,
)
from gumbel_analysis.model.mask_predictor import own_class_mask_logits

#: The reference configurations' three stages.
CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
CASCADE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)


class CascadeStage(nn.Module):
    """One stage before the last: its box head, predictor and classification loss."""

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module, loss: ClassificationLoss):
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.classification_loss = loss


@dataclass
class _Stage:
    """A stage as the loop sees it (the last one's modules are the base heads' own)."""

    box_head: nn.Module
    box_predictor: nn.Module
    loss: ClassificationLoss
    matcher: det_utils.Matcher
    box_coder: det_utils.BoxCoder
    weight: float


class CascadeRoIHeads(LossRoIHeads):
    """``LossRoIHeads`` with ``len(earlier) + 1`` box stages (module docstring). ``earlier``:
    the stages before the last; the base heads' box head, predictor and loss are the last.
    ``ious``, ``box_weights`` and ``loss_weights`` have one entry per stage."""

    #: Hybrid Task Cascade trains a mask stage after each box stage (:class:`HTCRoIHeads`).
    interleaved = False

    def __init__(
        self,
        classification_loss: ClassificationLoss,
        earlier: list[CascadeStage],
        *,
        ious: tuple[float, ...] = CASCADE_IOUS,
        box_weights: tuple[tuple[float, float, float, float], ...] = CASCADE_BOX_WEIGHTS,
        loss_weights: tuple[float, ...] = CASCADE_LOSS_WEIGHTS,
        **roi_heads_kwargs,
    ):
        stages = len(earlier) + 1
        if not len(ious) == len(box_weights) == len(loss_weights) == stages:
            raise ValueError(f"a cascade of {stages} stages needs {stages} IoUs and weights")
        roi_heads_kwargs.update(
            fg_iou_thresh=ious[-1], bg_iou_thresh=ious[-1], bbox_reg_weights=box_weights[-1]
        )
        super().__init__(classification_loss, **roi_heads_kwargs)
        self.earlier = nn.ModuleList(earlier)
        self.matchers = [det_utils.Matcher(i, i, allow_low_quality_matches=False) for i in ious]
        self.coders = [det_utils.BoxCoder(w) for w in box_weights]
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.recorded_stage = stages - 1

    @property
    def recorded_loss(self) -> ClassificationLoss:
        return self.stages[self.recorded_stage].loss

    @property
    def stages(self) -> list[_Stage]:
        heads = [(s.box_head, s.box_predictor, s.classification_loss) for s in self.earlier]
        heads.append((self.box_head, self.box_predictor, self.classification_loss))
        return [
            _Stage(head, predictor, loss, matcher, coder, weight)
            for (head, predictor, loss), matcher, coder, weight in zip(
                heads, self.matchers, self.coders, self.loss_weights, strict=True
            )
        ]

    def sample_stage(
        self,
        proposals: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        stage: _Stage,
    ) -> tuple[list[torch.Tensor], ...]:
        """torchvision's ``select_training_samples`` at the stage's IoU and box coder: the
        ground truths added, matched, sampled; (proposals, matched_idxs, labels, regression
        targets) per image, and whether each sampled RoI is a ground-truth box (last list)."""
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        counts = [len(p) for p in proposals]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = [], []
        all_labels = [t["labels"] for t in targets]
        for boxes, gt, gt_labels in zip(proposals, gt_boxes, all_labels, strict=True):
            if gt.numel() == 0:
                matched_idxs.append(torch.zeros(len(boxes), dtype=torch.int64, device=gt.device))
                labels.append(torch.zeros(len(boxes), dtype=torch.int64, device=gt.device))
                continue
            matched = stage.matcher(box_ops.box_iou(gt, boxes))
            clamped = matched.clamp(min=0)
            image_labels = gt_labels[clamped].to(torch.int64)
            image_labels[matched == stage.matcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[matched == stage.matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(clamped)
            labels.append(image_labels)
        sampled = self.subsample(labels)
        is_gt, matched_gt = [], []
        for i, keep in enumerate(sampled):
            proposals[i], labels[i] = proposals[i][keep], labels[i][keep]
            matched_idxs[i] = matched_idxs[i][keep]
            is_gt.append(keep >= counts[i])
            gt = gt_boxes[i] if gt_boxes[i].numel() else gt_boxes[i].new_zeros((1, 4))
            matched_gt.append(gt[matched_idxs[i]])
        regression_targets = stage.box_coder.encode(matched_gt, proposals)
        return proposals, matched_idxs, labels, regression_targets, is_gt

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return self._inference(features, proposals, image_shapes)
        assert targets is not None
        stages = self.stages
        losses = {"loss_classifier": 0.0, "loss_box_reg": 0.0}
        for k, stage in enumerate(stages):
            proposals, matched_idxs, labels, regression, is_gt = self.sample_stage(
                proposals, targets, stage
            )
            pooled = self.box_roi_pool(features, proposals, image_shapes)
            class_logits, box_regression = stage.box_predictor(stage.box_head(pooled))
            class_logits, box_regression = at_least_float32(class_logits, box_regression)
            loss_labels = to_loss_labels(torch.cat(labels), self.num_classes)
            if k == self.recorded_stage:
                for hook in self.class_logits_hooks:
                    hook(class_logits, loss_labels)
            extra = {}
            if stage.loss.needs_instances:
                extra["instances"] = matched_instances(labels, matched_idxs, targets)
            cls = stage.loss(class_logits, loss_labels, **extra)
            box = box_regression_loss(
                box_regression, loss_labels, torch.cat(regression), self.num_classes
            )
            losses["loss_classifier"] = losses["loss_classifier"] + stage.weight * cls
            losses["loss_box_reg"] = losses["loss_box_reg"] + stage.weight * box
            if k < len(stages) - 1 or self.interleaved:  # these RoIs, moved
                moved = self._moved(stage, box_regression.detach(), proposals, image_shapes)
                moved = [b[~g] for b, g in zip(moved, is_gt, strict=True)]
            if self.interleaved and self.has_mask():
                mask = self.interleaved_mask_loss(k, stage, features, moved, targets, image_shapes)
                losses["loss_mask"] = losses.get("loss_mask", 0.0) + stage.weight * mask
            if k < len(stages) - 1:  # the next stage's proposals
                proposals = moved
        if self.has_mask() and not self.interleaved:  # on the last stage's positives
            losses["loss_mask"] = self.mask_training_loss(
                features, proposals, matched_idxs, labels, targets, image_shapes
            )
        return [], losses

    def interleaved_mask_loss(
        self,
        k: int,
        stage: _Stage,
        features: dict[str, torch.Tensor],
        moved: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Stage ``k``'s (``stage``) mask loss (Hybrid Task Cascade only)."""
        raise NotImplementedError

    @staticmethod
    def _moved(
        stage: _Stage,
        box_regression: torch.Tensor,
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """The boxes moved by the stage's class-agnostic deltas, clipped to their images."""
        decoded = stage.box_coder.decode(box_regression, boxes).reshape(-1, 4)
        parts = decoded.split([len(b) for b in boxes])
        return [box_ops.clip_boxes_to_image(p, s) for p, s in zip(parts, image_shapes, strict=True)]

    def _inference(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        stages = self.stages
        per_image = [len(p) for p in proposals]
        boxes = proposals
        scores, backgrounds = [], []
        for k, stage in enumerate(stages):
            pooled = self.box_roi_pool(features, boxes, image_shapes)
            class_logits, box_regression = stage.box_predictor(stage.box_head(pooled))
            class_logits, box_regression = at_least_float32(class_logits, box_regression)
            scores.append(stage.loss.scores(class_logits))
            if self.score_calibration is not None:
                backgrounds.append(stage.loss.background_scores(class_logits))
            moved = self._moved(stage, box_regression, boxes, image_shapes)
            if k < len(stages) - 1:
                boxes = moved
        mean_scores = torch.stack(scores).mean(0)
        background = None
        if backgrounds and all(b is not None for b in backgrounds):
            background = torch.stack(backgrounds).mean(0)
        final = torch.cat(moved)[:, None, :].expand(-1, self.num_classes, 4)
        boxes, scores, labels = self.select_detections(
            final, mean_scores, background, per_image, image_shapes
        )
        result = [
            {"boxes": b, "labels": k, "scores": s}
            for b, k, s in zip(boxes, labels, scores, strict=True)
        ]
        if self.has_mask():
            self.add_masks(result, features, image_shapes)
        return result, {}


class HTCRoIHeads(CascadeRoIHeads):
    """Hybrid Task Cascade (Chen et al., CVPR 2019) without its semantic branch: a cascade whose
    mask branch has a stage after each box stage.

    **Interleaved training.** After box stage ``k``'s losses, its sampled RoIs (less the ground
    truths) are moved by its regression, matched and sampled again at its IoU (512 from them and
    the ground truths), and mask stage ``k`` is trained on their positives, weighted as the box
    stage. The moved boxes are also the next box stage's proposals.

    **Mask information flow.** Mask stage ``j`` reads the RoI's pooled features plus a 1x1
    convolution (and ReLU) of mask stage ``j - 1``'s features: ``f_0 = H_0(x)``,
    ``f_j = H_j(x + relu(conv_j(f_{j-1})))``, each stage's logits from its own predictor on
    ``f_j``. In training the earlier mask heads run again for a later stage and receive its
    gradient, as mmdetection's ``HybridTaskCascadeRoIHead``.

    **Inference.** Boxes and scores as the cascade; each detection's mask is the mean of the
    stages' mask probabilities on the final boxes.

    **Left out.** HTC's semantic segmentation branch (its fused semantic features in the box and
    mask RoIs): LVIS has no stuff annotations to train it on.

    ``earlier_masks``: (mask head, predictor) of the mask stages before the last; ``flows``: the
    1x1 convolutions of stages 1.. (the last one is the base heads' own mask head and predictor).
    """

    interleaved = True

    def __init__(
        self,
        classification_loss: ClassificationLoss,
        earlier: list[CascadeStage],
        earlier_masks: list[tuple[nn.Module, nn.Module]],
        flows: list[nn.Module],
        **kwargs,
    ):
        super().__init__(classification_loss, earlier, **kwargs)
        if not len(earlier_masks) == len(flows) == len(earlier):
            raise ValueError("HTC needs a mask stage and a flow for every box stage but the last")
        self.earlier_mask_heads = nn.ModuleList([h for h, _ in earlier_masks])
        self.earlier_mask_predictors = nn.ModuleList([p for _, p in earlier_masks])
        self.mask_flows = nn.ModuleList(flows)

    def mask_stage_features(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """``f_0 .. f_upto`` of the information flow (class docstring) from pooled ``x``."""
        heads = [*self.earlier_mask_heads, self.mask_head]
        feats: list[torch.Tensor] = []
        for j in range(upto + 1):
            inputs = x if j == 0 else x + self.mask_flows[j - 1](feats[-1])
            feats.append(heads[j](inputs))
        return feats

    def _stage_mask_logits(
        self, features: dict[str, torch.Tensor], boxes, image_shapes, classes, upto: int
    ) -> list[torch.Tensor]:
        predictors = [*self.earlier_mask_predictors, self.mask_predictor]
        x = self.mask_roi_pool(features, boxes, image_shapes)
        feats = self.mask_stage_features(x, upto)
        return [own_class_mask_logits(predictors[j], f, classes) for j, f in enumerate(feats)]

    def interleaved_mask_loss(
        self, k, stage, features, moved, targets, image_shapes
    ) -> torch.Tensor:
        proposals, matched_idxs, labels, _, _ = self.sample_stage(moved, targets, stage)
        boxes, matched, classes = foreground(proposals, matched_idxs, labels)
        logits = self._stage_mask_logits(features, boxes, image_shapes, classes, k)[-1]
        return mask_loss(logits, boxes, [t["masks"] for t in targets], matched)

    def mask_probabilities(self, features, boxes, image_shapes, classes) -> torch.Tensor:
        """The mean over the mask stages of their probabilities (class docstring)."""
        last = len(self.earlier_mask_heads)

        def mean_probability(part: list[torch.Tensor], part_classes: torch.Tensor):
            logits = self._stage_mask_logits(features, part, image_shapes, part_classes, last)
            return torch.stack([at_least_float32(z).sigmoid() for z in logits]).mean(0)

        return self.in_chunks(mean_probability, boxes, classes)

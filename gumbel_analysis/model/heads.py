"""Mask R-CNN's RoI heads with the classification loss and scores of the loss registry.

torchvision's ``RoIHeads`` hard-codes softmax cross-entropy (``fastrcnn_loss``) and softmax scores
(``postprocess_detections``). :class:`LossRoIHeads` subclasses it and re-orchestrates its public
building blocks (sampling, RoI pooling, box head, box coder, ``project_masks_on_boxes``) around a
:class:`~gumbel_analysis.losses.ClassificationLoss`; the mask logits come from
:func:`~gumbel_analysis.model.mask_predictor.own_class_mask_logits`.

Label conventions. torchvision's targets and outputs use ``0`` = background and ``1..C`` for the
foreground classes; the losses use ``0..C-1`` for the foreground and ``C`` for the background, with
logit columns ``[fg_0 .. fg_{C-1}, (bg)]``. The heads convert with :func:`to_loss_labels`
(torchvision label ``k >= 1`` -> ``k - 1``, ``0`` -> ``C``) and output ``class index + 1``. Box
regression and mask logits have exactly ``C`` class-specific outputs (no background slot), indexed
by the loss's class index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.ops import boxes as box_ops

from gumbel_analysis.losses.base import MEMORY_INSTANCE, ClassificationLoss
from gumbel_analysis.model.feature_memory import FeatureMemory
from gumbel_analysis.model.mask_predictor import own_class_mask_logits

#: Detections whose masks are computed at a time in inference.
MASK_INFERENCE_CHUNK = 64
#: torchvision's box-regression loss: smooth L1 with this beta.
BOX_SMOOTH_L1_BETA = 1.0 / 9.0

#: ``hook(class_logits, loss_labels)``, called in training right after the box classifier.
ClassLogitsHook = Callable[[torch.Tensor, torch.Tensor], None]


def to_loss_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """torchvision labels (0 = background, 1..C) -> loss labels (0..C-1, C = background)."""
    return torch.where(labels > 0, labels - 1, torch.full_like(labels, num_classes))


class BoxPredictor(nn.Module):
    """Classifier with ``loss.num_outputs`` columns, initialised by the loss, and class-specific
    box regression with ``4 C`` outputs (normal, std 0.001, as detectron2 and mmdetection), or
    ``class_agnostic`` 4 (a cascade's stages).

    ``decoupled``: the input is a :class:`DecoupledBoxHead`'s two representations side by side
    (``2 in_channels``); the classifier reads the first, the regressor the second."""

    def __init__(
        self,
        in_channels: int,
        loss: ClassificationLoss,
        class_agnostic: bool = False,
        decoupled: bool = False,
    ):
        super().__init__()
        self.decoupled = decoupled
        self.cls_score = nn.Linear(in_channels, loss.num_outputs)
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic else loss.num_classes * 4)
        loss.init_classifier(self.cls_score)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        if self.decoupled:
            for_classes, for_boxes = x.chunk(2, dim=1)
            return self.cls_score(for_classes), self.bbox_pred(for_boxes)
        return self.cls_score(x), self.bbox_pred(x)


class DecoupledBoxHead(nn.Module):
    """Two box heads on the same pooled RoI features, one for the classifier and one for the
    regressor (a diagnostic layout, not the paper's: Mask R-CNN shares one ``TwoMLPHead``
    between the two, so the classification loss's gradients shape the features the regressor
    reads). The output is the two representations concatenated, for a ``decoupled``
    :class:`BoxPredictor`."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.cls_head = TwoMLPHead(in_channels, representation_size)
        self.reg_head = TwoMLPHead(in_channels, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls_head(x), self.reg_head(x)], dim=1)


def matched_instances(
    labels: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
) -> torch.Tensor:
    """Per sampled RoI (all images concatenated) the id of its matched ground-truth instance,
    unique over the batch; -1 for background RoIs."""
    ids, offset = [], 0
    for k, m, t in zip(labels, matched_idxs, targets, strict=True):
        ids.append(torch.where(k > 0, m + offset, torch.full_like(m, -1)))
        offset += len(t["boxes"])
    return torch.cat(ids)


def foreground(
    proposals: list[torch.Tensor], matched_idxs: list[torch.Tensor], labels: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The foreground RoIs of each image (torchvision label > 0): their boxes and matched
    instances per image, and their classes (0..C-1) concatenated."""
    fg = [torch.where(k > 0)[0] for k in labels]
    boxes = [p[i] for p, i in zip(proposals, fg, strict=True)]
    matched = [m[i] for m, i in zip(matched_idxs, fg, strict=True)]
    classes = torch.cat([k[i] for k, i in zip(labels, fg, strict=True)]) - 1
    return boxes, matched, classes


def at_least_float32(*tensors: torch.Tensor) -> Any:
    """The tensors in float32 where autocast made them half precision (float64 stays)."""
    cast = [t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]
    return cast[0] if len(cast) == 1 else tuple(cast)


def mask_loss(
    mask_logits: torch.Tensor,
    proposals: list[torch.Tensor],
    gt_masks: list[torch.Tensor],
    matched_idxs: list[torch.Tensor],
) -> torch.Tensor:
    """torchvision's ``maskrcnn_loss`` on own-class logits [K, M, M]: the mean binary
    cross-entropy against each RoI's matched instance mask, cropped and resized to M x M by
    RoIAlign; 0 (with a gradient path) when there is no foreground RoI."""
    size = mask_logits.shape[-1]
    targets = torch.cat(
        [
            project_masks_on_boxes(m, p, i, size)
            for m, p, i in zip(gt_masks, proposals, matched_idxs, strict=True)
        ]
    )
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    return F.binary_cross_entropy_with_logits(at_least_float32(mask_logits), targets)


def box_regression_loss(
    box_regression: torch.Tensor,
    loss_labels: torch.Tensor,
    regression_targets: torch.Tensor,
    num_classes: int | None = None,
) -> torch.Tensor:
    """torchvision's box loss: smooth L1 (beta 1/9) of the foreground RoIs' own-class deltas,
    summed and divided by the number of sampled RoIs (background included). ``loss_labels`` in
    0..C (C: the background); ``box_regression`` [N, 4 C], or [N, 4] class-agnostic (a cascade's
    stages) with ``num_classes`` C given."""
    outputs = box_regression.shape[1] // 4
    num_classes = outputs if num_classes is None else num_classes
    fg = torch.where(loss_labels < num_classes)[0]
    own = loss_labels[fg] if outputs > 1 else torch.zeros_like(loss_labels[fg])
    deltas = box_regression.reshape(box_regression.shape[0], outputs, 4)[fg, own]
    loss = F.smooth_l1_loss(
        deltas, regression_targets[fg], beta=BOX_SMOOTH_L1_BETA, reduction="sum"
    )
    return loss / max(loss_labels.numel(), 1)


class LossRoIHeads(RoIHeads):
    """``RoIHeads`` whose classifier is trained with ``classification_loss`` and scored with its
    activation. Takes RoIHeads' keyword arguments plus the loss.

    :meth:`register_class_logits_hook` declares where a caller can observe the classifier: in
    training, each hook is called as ``hook(logits, loss_labels)`` right after the classifier
    (so a gradient recorder can hook the logits tensor). The heads know nothing of what for.
    """

    def __init__(self, classification_loss: ClassificationLoss, **roi_heads_kwargs):
        super().__init__(**roi_heads_kwargs)
        self.classification_loss = classification_loss
        #: Test-time score calibration (``model.calibration.NorCal``: the [N, C] scores and the
        #: loss's background scores or None -> [N, C]), applied before thresholding and NMS;
        #: None scores as the loss does.
        self.score_calibration: nn.Module | None = None
        #: LOCE's memory-augmented feature sampling (``model.feature_memory``): replayed
        #: ground-truth features appended to the sampled RoIs in training; None: none.
        self.feature_memory: FeatureMemory | None = None
        self._class_logits_hooks: OrderedDict[int, ClassLogitsHook] = OrderedDict()
        #: The box stage (0-based) whose classifier the class-logits hooks see: Mask R-CNN has
        #: one; a cascade's last by default (``--grad-stage``).
        self.recorded_stage = 0

    @property
    def num_classes(self) -> int:
        return self.classification_loss.num_classes

    @property
    def recorded_loss(self) -> ClassificationLoss:
        """The loss of the classifier the class-logits hooks see (a cascade: its recorded
        stage's)."""
        return self.classification_loss

    @property
    def class_logits_hooks(self) -> tuple[ClassLogitsHook, ...]:
        """The registered class-logits hooks, in the order they are called."""
        return tuple(self._class_logits_hooks.values())

    def register_class_logits_hook(self, hook: ClassLogitsHook) -> RemovableHandle:
        """Call ``hook(class_logits, loss_labels)`` at every training forward, right after the
        box classifier (logits [N, loss.num_outputs], labels [N] in 0..C, C = background).

        Returns a handle whose ``remove()`` unregisters it, as ``nn.Module.register_forward_hook``.
        """
        handle = RemovableHandle(self._class_logits_hooks)
        self._class_logits_hooks[handle.id] = hook
        return handle

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        if self.training:
            loss_labels = to_loss_labels(torch.cat(labels), self.num_classes)
            regression = torch.cat(regression_targets)
            memory_rows = 0
            if self.feature_memory is not None:
                replayed, replayed_labels, replayed_targets = self.replay(
                    features, image_shapes, targets
                )
                memory_rows = len(replayed_labels)
                box_features = torch.cat([box_features, replayed.to(box_features.dtype)])
                loss_labels = torch.cat([loss_labels, replayed_labels])
                regression = torch.cat([regression, replayed_targets.to(regression.dtype)])
        class_logits, box_regression = self.box_predictor(self.box_head(box_features))

        if not self.training:
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes
            )
            result = [
                {"boxes": b, "labels": k, "scores": s}
                for b, k, s in zip(boxes, labels, scores, strict=True)
            ]
            if self.has_mask():
                self.add_masks(result, features, image_shapes)
            return result, {}

        # The losses in float32 under autocast too (as the scores of postprocess_detections).
        class_logits, box_regression = at_least_float32(class_logits, box_regression)
        for hook in self._class_logits_hooks.values():
            hook(class_logits, loss_labels)
        extra = {}
        if self.classification_loss.needs_instances:
            instances = matched_instances(labels, matched_idxs, targets)
            replayed_ids = instances.new_full((memory_rows,), MEMORY_INSTANCE)
            extra["instances"] = torch.cat([instances, replayed_ids])
        losses = {
            "loss_classifier": self.classification_loss(class_logits, loss_labels, **extra),
            "loss_box_reg": box_regression_loss(box_regression, loss_labels, regression),
        }
        if self.has_mask():
            losses["loss_mask"] = self.mask_training_loss(
                features, proposals, matched_idxs, labels, targets, image_shapes
            )
        return [], losses

    def mask_training_loss(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
        labels: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """The mask loss of the sampled RoIs: on the foreground ones only, against their
        matched instance."""
        boxes, matched, classes = foreground(proposals, matched_idxs, labels)
        logits = self.mask_logits(features, boxes, image_shapes, classes)
        return mask_loss(logits, boxes, [t["masks"] for t in targets], matched)

    def replay(
        self,
        features: dict[str, torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step of the feature memory: the ground truths' jittered boxes pooled into it,
        and the replayed (features, loss labels, regression targets) back."""
        assert self.feature_memory is not None

        def pool(boxes: list[torch.Tensor]) -> torch.Tensor:
            return self.box_roi_pool(features, boxes, image_shapes)

        def encode(truths: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
            if sum(len(b) for b in boxes) == 0:
                return boxes[0].new_zeros((0, 4)) if boxes else torch.zeros(0, 4)
            return torch.cat(self.box_coder.encode(truths, boxes))

        return self.feature_memory(
            pool,
            encode,
            [t["boxes"] for t in targets],
            [to_loss_labels(t["labels"], self.num_classes) for t in targets],
            image_shapes,
            self.classification_loss.memory_scores(),
        )

    def add_masks(
        self,
        result: list[dict[str, torch.Tensor]],
        features: dict[str, torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> None:
        """Each detection's mask [1, M, M]: its own class's channel, as torchvision's inference
        (``mask_probabilities``)."""
        labels = [r["labels"] for r in result]
        boxes = [r["boxes"] for r in result]
        masks = self.mask_probabilities(features, boxes, image_shapes, torch.cat(labels) - 1)
        for r, m in zip(result, masks.unsqueeze(1).split([len(k) for k in labels]), strict=True):
            r["masks"] = m

    def mask_probabilities(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        classes: torch.Tensor,
    ) -> torch.Tensor:
        """[K, M, M] mask probabilities at test time: the sigmoid of :meth:`mask_logits`."""
        return at_least_float32(self.mask_logits(features, boxes, image_shapes, classes)).sigmoid()

    def mask_logits(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        classes: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits [K, M, M] of the boxes (all images concatenated), each of its class in
        ``classes`` (0..C-1)."""

        def logits(part: list[torch.Tensor], part_classes: torch.Tensor) -> torch.Tensor:
            x = self.mask_head(self.mask_roi_pool(features, part, image_shapes))
            return own_class_mask_logits(self.mask_predictor, x, part_classes)

        return self.in_chunks(logits, boxes, classes)

    def in_chunks(
        self,
        fn: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
        boxes: list[torch.Tensor],
        classes: torch.Tensor,
    ) -> torch.Tensor:
        """``fn(boxes, classes)`` for all RoIs at once in training, else in chunks of
        ``MASK_INFERENCE_CHUNK`` (one image's boxes at a time), concatenated."""
        if self.training or sum(len(b) for b in boxes) <= MASK_INFERENCE_CHUNK:
            return fn(boxes, classes)
        # Inference keeps up to 300 detections per image, whose mask-head activations would take
        # hundreds of MB at once; in chunks they stay in the cache. Each RoI's logits are its own,
        # so chunking changes nothing but the order of the work.
        chunks, offset = [], 0
        no_boxes = [b[:0] for b in boxes]
        for image, image_boxes in enumerate(boxes):
            for part in image_boxes.split(MASK_INFERENCE_CHUNK):
                only = [*no_boxes[:image], part, *no_boxes[image + 1 :]]
                chunks.append(fn(only, classes[offset : offset + len(part)]))
                offset += len(part)
        return torch.cat(chunks)

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: class-specific boxes decoded and clipped, scores from the loss's activation
        (background column dropped; then ``score_calibration`` if set), then as torchvision:
        score > ``score_thresh``, boxes wider and taller than 0.01, NMS per class at
        ``nms_thresh``, the top ``detections_per_img``.

        Returns boxes [K, 4], scores [K] and labels [K] in 1..C per image.
        """
        per_image = [len(p) for p in proposals]
        # float32 even under autocast: half precision cannot place boxes in 1333 px images, and
        # its 8 (bfloat16) or 11 (float16) bits would tie the scores AP ranks by.
        box_regression, class_logits = at_least_float32(box_regression, class_logits)
        all_boxes = self.box_coder.decode(box_regression, proposals)
        all_scores = self.classification_loss.scores(class_logits)
        background = None
        if self.score_calibration is not None:
            background = self.classification_loss.background_scores(class_logits)
        return self.select_detections(all_boxes, all_scores, background, per_image, image_shapes)

    def select_detections(
        self,
        all_boxes: torch.Tensor,
        all_scores: torch.Tensor,
        background: torch.Tensor | None,
        per_image: list[int],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """From the decoded boxes [N, C, 4] and scores [N, C] of all images' RoIs (``per_image``
        of each; ``background`` [N] or None, for the calibration): ``score_calibration`` if
        set, then per image the threshold, the small-box filter, NMS and the top detections
        (see :meth:`postprocess_detections`)."""
        num_classes = self.num_classes
        if self.score_calibration is not None:
            all_scores = self.score_calibration(all_scores, background)
        all_boxes, all_scores = all_boxes.split(per_image), all_scores.split(per_image)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes, shape).reshape(-1, 4)
            labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(len(scores))
            scores = scores.reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels

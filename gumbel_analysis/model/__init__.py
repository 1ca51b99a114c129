"""Mask R-CNN (torchvision, FPN) with the box classifier of the loss registry.

``build_model("tiny", num_classes, build_loss("gumbel", num_classes))``.
"""

from gumbel_analysis.model.build import (
    ENH_NMS_IOU,
    NMS_IOU,
    PRESETS,
    Preset,
    build_model,
    get_preset,
    read_weights,
)
from gumbel_analysis.model.heads import (
    BoxPredictor,
    LossRoIHeads,
    box_regression_loss,
    to_loss_labels,
)
from gumbel_analysis.model.mask_predictor import CosineConv1x1, own_class_mask_logits

__all__ = [
    "ENH_NMS_IOU",
    "NMS_IOU",
    "PRESETS",
    "BoxPredictor",
    "CosineConv1x1",
    "LossRoIHeads",
    "Preset",
    "box_regression_loss",
    "build_model",
    "get_preset",
    "own_class_mask_logits",
    "read_weights",
    "to_loss_labels",
]

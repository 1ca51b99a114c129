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
    CosineConv1x1,
    LossRoIHeads,
    box_regression_loss,
    to_loss_labels,
)

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
    "read_weights",
    "to_loss_labels",
]

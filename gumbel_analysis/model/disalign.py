"""DisAlign's second stage (Zhang et al., CVPR 2021): one adjustment of a trained classifier.

The first-stage model is frozen: every parameter, and BatchNorm as :class:`FrozenBatchNorm2d`
with the statistics it learnt. Only three new tensors train. Each foreground logit ``z_c`` (the
first C columns; a background column is left as it is) becomes

    z'_c = sigma(x) (alpha_c z_c + beta_c) + (1 - sigma(x)) z_c

Here ``sigma(x) = sigmoid(w . x + b)`` is an input-dependent confidence, computed from the box
head's features ``x``. ``alpha`` (1 at the start) and ``beta`` (0) are a class-wise scale and
bias. ``w`` is drawn from N(0, 0.01) and ``b`` is 0, so the adjustment starts as the identity, as
in the authors' ``DisAlignFastRCNNOutputLayers``. Its loss is
:class:`~gumbel_analysis.losses.methods.disalign.DisAlignLoss`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from gumbel_analysis.model.heads import BoxPredictor

#: The parameters DisAlign's second stage trains (names inside the box predictor).
ALIGNMENT_PARAMETERS = (
    "logit_scale",
    "logit_bias",
    "confidence_layer.weight",
    "confidence_layer.bias",
)


class DisAlignBoxPredictor(BoxPredictor):
    """A :class:`BoxPredictor` whose first C logits go through DisAlign's adjustment. Its state
    holds the first stage's ``cls_score`` and ``bbox_pred`` under their own names."""

    def __init__(self, in_channels: int, loss) -> None:
        super().__init__(in_channels, loss)
        c = loss.num_classes
        self.logit_scale = nn.Parameter(torch.ones(c))
        self.logit_bias = nn.Parameter(torch.zeros(c))
        self.confidence_layer = nn.Linear(in_channels, 1)
        nn.init.normal_(self.confidence_layer.weight, std=0.01)
        nn.init.zeros_(self.confidence_layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        logits = self.cls_score(x)
        c = len(self.logit_scale)
        confidence = torch.sigmoid(self.confidence_layer(x))
        own = logits[:, :c]
        aligned = confidence * (own * self.logit_scale + self.logit_bias) + (1 - confidence) * own
        return torch.cat([aligned, logits[:, c:]], dim=1), self.bbox_pred(x)


def frozen_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` (in place; the
    statistics and affine parameters are copied), so training leaves them as they are."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            frozen_batch_norm(child)
    return module


def freeze_all_but_the_alignment(model: nn.Module) -> None:
    """Every parameter frozen except the box predictor's alignment; BatchNorm frozen too."""
    frozen_batch_norm(model)
    for p in model.parameters():
        p.requires_grad_(False)
    predictor = model.roi_heads.box_predictor
    for name, p in predictor.named_parameters():
        if name in ALIGNMENT_PARAMETERS:
            p.requires_grad_(True)

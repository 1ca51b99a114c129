"""The mask predictor's logits, computed for each RoI's own class only.

Mask R-CNN's mask loss and its inference read one class channel per RoI: the matched instance's
class in training, the detection's class in inference. torchvision's predictor (a 2x2, stride-2
transposed convolution, ReLU, then a 1x1 convolution to all C classes) computes the other C - 1
channels for nothing; with 96 classes they were the largest single cost of a ``tiny`` training
step and of a Sigmoid model's inference (about 260 detections per image).
:func:`own_class_mask_logits` computes ``predictor(x)[k, classes[k]]`` directly. The values
and gradients are those of the full predictor's selected channels up to float rounding (tested
against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Temperature of the normalised (cosine) mask predictor, as in the Seesaw Loss paper.
MASK_COSINE_TEMPERATURE = 20.0


class CosineConv1x1(nn.Module):
    """Normalised 1x1 convolution: ``T * cos(w_c, x) + b_c`` at every pixel.

    Weights and features are L2-normalised over the channels, so the output does not change when
    the features are scaled (the Seesaw Loss paper's normalised mask predictor, T = 20; the bias
    follows its reference implementation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temperature: float = MASK_COSINE_TEMPERATURE,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.temperature = float(temperature)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        w = self.weight / (self.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + self.eps)
        return F.conv2d(x, w * self.temperature, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[0]}, temperature={self.temperature}, "
            f"eps={self.eps}"
        )


def _class_rows(
    layer: nn.Module, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float | None] | None:
    """``(weight [K, C], bias [K], eps)`` of a 1x1 classifier layer for the given classes, where
    ``eps`` is not None when the input is L2-normalised over channels first (cosine); None when
    the layer is of another kind."""
    if isinstance(layer, CosineConv1x1):
        weight = layer.weight[classes].flatten(1)
        weight = weight / (weight.norm(dim=1, keepdim=True) + layer.eps) * layer.temperature
        return weight, layer.bias[classes], layer.eps
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        weight = layer.weight[classes].flatten(1)
        if layer.bias is None:
            return weight, weight.new_zeros(len(classes)), None
        return weight, layer.bias[classes], None
    return None


class _RowDot(torch.autograd.Function):
    """``out[k, p] = bias[k] + sum_o up[k, p, o] * weight[k, o]``: [K, P, O], [K, O], [K] -> [K, P].

    ``torch.baddbmm`` computes the same forward, but its backward for ``up`` is a batch of rank-1
    matrix products (``[P, 1] @ [1, O]`` per RoI) that the CPU's bmm ran at a tenth of memory
    speed, leaving a strided gradient that cost two more copies; here it is one broadcast product.
    """

    @staticmethod
    def forward(ctx, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(up, weight)
        return torch.baddbmm(bias.view(-1, 1, 1), up, weight.unsqueeze(2)).squeeze(2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        up, weight = ctx.saved_tensors
        grad_up = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_up = grad.unsqueeze(2) * weight.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad.unsqueeze(1), up).squeeze(1)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1)
        return grad_up, grad_weight, grad_bias


def _is_patchwise(layer: nn.Module) -> bool:
    """A transposed convolution whose kernel tiles its output without overlap."""
    return (
        isinstance(layer, nn.ConvTranspose2d)
        and layer.kernel_size == layer.stride
        and layer.padding == (0, 0)
        and layer.output_padding == (0, 0)
        and layer.dilation == (1, 1)
        and layer.groups == 1
    )


def own_class_mask_logits(
    mask_predictor: nn.Module, x: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """``mask_predictor(x)[k, classes[k]]`` for every RoI k ([K, C_in, H, W] -> [K, M, M]).

    For torchvision's ``MaskRCNNPredictor`` (or with :class:`CosineConv1x1` last) it is
    computed as ``rows_k . relu(deconv(x))`` at each output pixel: the transposed convolution as
    one matrix product laid out pixel-major (``u[k, p, o] = b_o + sum_c x[k, c, p] W[c, o, p']``),
    then one dot product per RoI with its class's row of the 1x1 layer. Any other predictor is run
    whole and its channels selected.
    """
    layers = list(mask_predictor.children()) if isinstance(mask_predictor, nn.Sequential) else []
    rows = _class_rows(layers[-1], classes) if len(layers) == 3 else None
    if rows is None or not _is_patchwise(layers[0]) or not isinstance(layers[1], nn.ReLU):
        logits = mask_predictor(x)
        return logits[torch.arange(len(classes), device=classes.device), classes]
    deconv, (weight, bias, eps) = layers[0], rows
    n, c, h, w = x.shape
    kh, kw = deconv.kernel_size
    out = deconv.out_channels
    # Columns ordered (a, b, o): each input pixel's kh x kw output patch, channels last.
    kernel = deconv.weight.permute(0, 2, 3, 1).reshape(c, kh * kw * out)
    pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    if deconv.bias is None:
        up = pixels @ kernel
    else:
        up = torch.addmm(deconv.bias.repeat(kh * kw), pixels, kernel)
    up = torch.relu_(up).view(n, h * w * kh * kw, out)
    if eps is not None:
        up = up / (up.norm(dim=2, keepdim=True) + eps)
    logits = _RowDot.apply(up, weight, bias)
    return logits.view(n, h, w, kh, kw).permute(0, 1, 3, 2, 4).reshape(n, h * kh, w * kw)

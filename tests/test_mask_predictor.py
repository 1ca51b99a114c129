"""Own-class mask logits against the full predictor, and the mask loss against torchvision's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss

from gumbel_analysis.model import CosineConv1x1, build_model, own_class_mask_logits
from gumbel_analysis.model import heads as heads_module
from gumbel_analysis.model.heads import mask_loss
from tests.test_model import make_batch, make_loss

C_IN, CLASSES, K = 8, 6, 5


def predictor(kind: str) -> nn.Module:
    torch.manual_seed(0)
    module = MaskRCNNPredictor(C_IN, C_IN, CLASSES)
    if kind == "cosine":
        module.mask_fcn_logits = CosineConv1x1(C_IN, CLASSES)
    if kind == "other":  # not the deconv-relu-1x1 pattern: run whole, channels selected
        module = nn.Sequential(nn.Conv2d(C_IN, C_IN, 3, padding=1), nn.Conv2d(C_IN, CLASSES, 1))
    with torch.no_grad():
        for parameter in module.parameters():  # biases are zero at init: make them count
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return module.double()


def reference(module: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The full predictor, all C channels, then each RoI's own (as torchvision's loss does)."""
    return module(x)[torch.arange(len(classes)), classes]


@pytest.mark.parametrize("kind", ["plain", "cosine", "other"])
def test_own_class_logits_equal_the_full_predictor_with_gradients(kind):
    module = predictor(kind)
    x = torch.randn(K, C_IN, 7, 7, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([0, 5, 2, 2, 4])
    ours, theirs = own_class_mask_logits(module, x, classes), reference(module, x, classes)
    assert ours.shape == (K, 14, 14) if kind != "other" else (K, 7, 7)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    inputs = [x, *module.parameters()]
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours, inputs, upstream),
        torch.autograd.grad(theirs, inputs, upstream),
        strict=True,
    ):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["plain", "cosine"])
def test_own_class_logits_pass_gradcheck(kind):
    module = predictor(kind)
    classes = torch.tensor([1, 3])
    x = torch.randn(2, C_IN, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: own_class_mask_logits(module, x, classes), (x,))


def test_mask_loss_equals_torchvisions_on_the_full_logits():
    torch.manual_seed(1)
    full = torch.randn(4, CLASSES, 14, 14, dtype=torch.float64, requires_grad=True)
    proposals = [torch.tensor([[2.0, 3.0, 20.0, 30.0], [5.0, 5.0, 40.0, 25.0]]).double()] * 2
    gt_masks = [torch.rand(3, 48, 48) > 0.5, torch.rand(2, 48, 48) > 0.5]
    gt_labels = [torch.tensor([1, 4, 2]), torch.tensor([5, 0])]
    matched = [torch.tensor([2, 0]), torch.tensor([1, 1])]
    classes = torch.cat([g[m] for g, m in zip(gt_labels, matched, strict=True)])
    theirs = maskrcnn_loss(full, proposals, gt_masks, gt_labels, matched)
    ours = mask_loss(full[torch.arange(4), classes], proposals, gt_masks, matched)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    g_ours, g_theirs = (torch.autograd.grad(v, full)[0] for v in (ours, theirs))
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-15)
    empty = [torch.zeros(0, dtype=torch.long)] * 2
    zero = mask_loss(full[:0, 0], [p[:0] for p in proposals], gt_masks, empty)
    assert zero.item() == 0 and zero.requires_grad


def test_inference_masks_equal_torchvisions_and_do_not_depend_on_the_chunk(monkeypatch):
    torch.manual_seed(0)
    model = build_model("tiny", 3, make_loss("sigmoid"), score_thresh=0.0).eval()
    heads = model.roi_heads
    with torch.no_grad():
        batch = model.transform(make_batch()[0])[0]
        features = model.backbone(batch.tensors)
        proposals = model.rpn(batch, features)[0]
        whole = heads(features, proposals, batch.image_sizes)[0]
        monkeypatch.setattr(heads_module, "MASK_INFERENCE_CHUNK", 7)
        chunked = heads(features, proposals, batch.image_sizes)[0]
        # torchvision's inference on the same detections: all C channels, then the label's.
        boxes = [r["boxes"] for r in whole]
        logits = heads.mask_predictor(
            heads.mask_head(heads.mask_roi_pool(features, boxes, batch.image_sizes))
        )
        expected = maskrcnn_inference(logits, [r["labels"] - 1 for r in whole])
    assert sum(len(b) for b in boxes) > 20
    for plain, small, probs in zip(whole, chunked, expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(plain[key], small[key])
        torch.testing.assert_close(plain["masks"], probs, rtol=0, atol=1e-5)
        torch.testing.assert_close(small["masks"], probs, rtol=0, atol=1e-5)

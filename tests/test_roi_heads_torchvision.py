"""LossRoIHeads with the softmax loss is torchvision's own RoIHeads: same losses, same detections.

LossRoIHeads re-orchestrates torchvision's building blocks (sampling, pooling, box coder, mask
loss and inference) around a loss of the registry. With the softmax loss and the same weights,
moved to torchvision's column convention (background first, a box and mask slot for it), both
must give the same training losses and the same detections; a torchvision upgrade that changes
the internals LossRoIHeads relies on then fails here instead of training silently wrong.
"""

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads

from gumbel_analysis.losses import build_loss
from gumbel_analysis.model import build_model

C = 5  # foreground classes
IMAGE = (128, 160)


def torchvision_heads(ours, dtype):
    """torchvision's RoIHeads on the same modules; the predictor's weights permuted to
    torchvision's columns [bg, fg_1..fg_C] (ours: [fg_0..fg_{C-1}, bg]; boxes and masks have no
    background slot in ours: torchvision's slot 0 gets random values it must never use)."""
    rep = ours.box_predictor.cls_score.in_features
    predictor = FastRCNNPredictor(rep, C + 1).to(dtype)
    order = torch.tensor([C, *range(C)])
    with torch.no_grad():
        predictor.cls_score.weight.copy_(ours.box_predictor.cls_score.weight[order])
        predictor.cls_score.bias.copy_(ours.box_predictor.cls_score.bias[order])
        predictor.bbox_pred.weight[4:].copy_(ours.box_predictor.bbox_pred.weight)
        predictor.bbox_pred.bias[4:].copy_(ours.box_predictor.bbox_pred.bias)
        predictor.bbox_pred.weight[:4].normal_(std=10.0)  # garbage in the unused slot
    ours_conv = ours.mask_predictor.mask_fcn_logits
    mask_predictor = nn.Sequential()
    for name, module in ours.mask_predictor.named_children():
        if name != "mask_fcn_logits":
            mask_predictor.add_module(name, module)
    conv = nn.Conv2d(ours_conv.in_channels, C + 1, 1).to(dtype)
    with torch.no_grad():
        conv.weight[1:].copy_(ours_conv.weight)
        conv.bias[1:].copy_(ours_conv.bias)
        conv.weight[:1].normal_(std=10.0)
    mask_predictor.add_module("mask_fcn_logits", conv)
    tv = RoIHeads(
        box_roi_pool=ours.box_roi_pool,
        box_head=ours.box_head,
        box_predictor=predictor,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=ours.fg_bg_sampler.batch_size_per_image,
        positive_fraction=ours.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=None,
        score_thresh=ours.score_thresh,
        nms_thresh=ours.nms_thresh,
        detections_per_img=ours.detections_per_img,
        mask_roi_pool=ours.mask_roi_pool,
        mask_head=ours.mask_head,
        mask_predictor=mask_predictor,
    )
    tv.proposal_matcher = ours.proposal_matcher
    tv.box_coder = ours.box_coder
    return tv


def inputs(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE
    features = {
        name: torch.randn(2, 64, h // s, w // s, generator=g, dtype=dtype)
        for name, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32))
    }
    proposals, targets = [], []
    for _ in range(2):
        xy = torch.rand(60, 2, generator=g, dtype=dtype) * torch.tensor([w - 40, h - 40])
        wh = 8 + torch.rand(60, 2, generator=g, dtype=dtype) * 40
        proposals.append(torch.cat([xy, xy + wh], 1))
        boxes = proposals[-1][:4].clone() + 2.0
        masks = torch.zeros(4, h, w, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(1, C + 1, (4,), generator=g),
                "masks": masks,
            }
        )
    return features, proposals, [IMAGE, IMAGE], targets


def make_heads(dtype):
    torch.manual_seed(0)
    model = build_model("tiny", C, build_loss("softmax", C)).to(dtype)
    ours = model.roi_heads
    ours.score_thresh = 0.05
    # The tiny preset pools four 64-channel FPN levels, as inputs() makes them.
    assert ours.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    return ours, torchvision_heads(ours, dtype)


def test_softmax_training_losses_are_torchvisions():
    ours, tv = make_heads(torch.float64)  # float64: equal to rounding
    ours.train(), tv.train()
    features, proposals, shapes, targets = inputs(0, torch.float64)
    torch.manual_seed(1)  # the same RoI sampling in both
    _, mine = ours(features, [p.clone() for p in proposals], shapes, targets)
    torch.manual_seed(1)
    _, theirs = tv(features, [p.clone() for p in proposals], shapes, targets)
    assert set(mine) == set(theirs) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-12, atol=1e-12, msg=key)
    assert float(theirs["loss_box_reg"]) > 0 and float(theirs["loss_mask"]) > 0


def test_softmax_detections_are_torchvisions():
    # float32: LossRoIHeads decodes boxes in float32 whatever the features' type.
    ours, tv = make_heads(torch.float32)
    ours.eval(), tv.eval()
    features, proposals, shapes, _ = inputs(1, torch.float32)
    with torch.no_grad():
        mine, _ = ours(features, proposals, shapes)
        theirs, _ = tv(features, proposals, shapes)
    assert sum(len(r["boxes"]) for r in theirs) > 0
    for a, b in zip(mine, theirs, strict=True):
        assert a.keys() == b.keys() == {"boxes", "labels", "scores", "masks"}
        assert torch.equal(a["labels"], b["labels"])
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)

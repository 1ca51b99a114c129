"""Mask R-CNN wired to the loss registry: forward passes, scores, initialisation, weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import available_losses, build_loss
from gumbel_analysis.model import (
    ENH_NMS_IOU,
    NMS_IOU,
    PRESETS,
    CosineConv1x1,
    LossRoIHeads,
    build_model,
    to_loss_labels,
)

C = 3
# One class below the LVIS lambda (~0.001), so the DropLoss family drops something.
FREQUENCY = torch.tensor([0.0005, 0.02, 0.3])
LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def make_loss(name: str):
    return build_loss(name, C, FREQUENCY, ["r", "f", "f"])


def make_batch(sizes=((96, 112), (128, 128))):
    """Images with solid rectangles (a colour per class) and their torchvision targets."""
    generator = torch.Generator().manual_seed(1)
    images, targets = [], []
    for h, w in sizes:
        image = torch.rand(3, h, w, generator=generator) * 0.2
        boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [55.0, 30.0, 90.0, 80.0]])
        labels = torch.tensor([1, 3])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
            image[:, y1:y2, x1:x2] = labels[k] / C
        images.append(image)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def independent_scores(activation: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores [N, C] computed from the activation's formula."""
    if activation == "gumbel":
        probs = torch.exp(-torch.exp(-logits))
    elif activation == "sigmoid":
        probs = 1.0 / (1.0 + torch.exp(-logits))
    else:
        probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return probs[:, :C]


@pytest.mark.parametrize("name", available_losses())
def test_train_and_eval_forward(name):
    model = build_model("tiny", C, make_loss(name))
    images, targets = make_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    predictor = model.roi_heads.box_predictor
    trained = predictor.cls_score.weight
    if name == "disalign":  # a second stage: only the alignment trains (test_disalign.py)
        assert trained.grad is None
        trained = predictor.logit_bias
    grad = trained.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for out, image in zip(outputs, images, strict=True):
        k = len(out["scores"])
        assert k <= model.roi_heads.detections_per_img
        assert out["boxes"].shape == (k, 4)
        assert out["masks"].shape == (k, 1, *image.shape[1:])
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
        assert ((out["labels"] >= 1) & (out["labels"] <= C)).all()
        assert ((out["masks"] >= 0) & (out["masks"] <= 1)).all()
        # batched NMS returns the detections sorted by score.
        assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_enh_forward_and_settings():
    plain = build_model("tiny", C, make_loss("gumbel"))
    enh = build_model("tiny", C, make_loss("gumbel"), enh=True)
    assert plain.roi_heads.nms_thresh == NMS_IOU == 0.5
    assert enh.roi_heads.nms_thresh == ENH_NMS_IOU == 0.3
    assert isinstance(enh.roi_heads.mask_predictor.mask_fcn_logits, CosineConv1x1)
    assert not isinstance(plain.roi_heads.mask_predictor.mask_fcn_logits, CosineConv1x1)
    images, targets = make_batch()
    losses = enh(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    enh.eval()
    with torch.no_grad():
        out = enh(images)[0]
    assert out["masks"].shape[1:] == (1, *images[0].shape[1:])


def test_test_settings_defaults():
    model = build_model("tiny", C, make_loss("softmax"))
    assert model.roi_heads.score_thresh == 1e-4
    assert model.roi_heads.detections_per_img == 300


def test_cosine_mask_predictor_is_scale_invariant():
    layer = CosineConv1x1(16, 5)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(5))
    x = torch.rand(2, 16, 6, 6)
    out = layer(x)
    torch.testing.assert_close(layer(7.5 * x), out)
    torch.testing.assert_close(layer(0.01 * x), out, rtol=1e-4, atol=1e-4)
    # Independent: 20 * cos(w_c, x_pixel) + b_c at each pixel.
    w = layer.weight.detach().flatten(1)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 16)
    cosine = F.cosine_similarity(pixels[:, None, :], w[None, :, :], dim=2)
    expected = (20.0 * cosine + layer.bias.detach()).reshape(2, 6, 6, 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-4, atol=1e-4)


def test_to_loss_labels():
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert to_loss_labels(labels, 3).tolist() == [3, 0, 1, 2, 3]


@pytest.mark.parametrize("name", ["gumbel", "sigmoid", "softmax", "gol"])
def test_postprocess_scores_with_the_loss_activation(name):
    loss = make_loss(name)
    model = build_model("tiny", C, loss).eval()
    heads = model.roi_heads
    proposals = torch.tensor([[5.0, 5.0, 40.0, 40.0], [60.0, 60.0, 100.0, 110.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-0.5, 1.5, -2.0, 0.0]])[:, : loss.num_outputs]
    boxes, scores, labels = heads.postprocess_detections(
        logits, torch.zeros(2, 4 * C), [proposals], [(128, 128)]
    )
    expected = independent_scores(loss.activation, logits)
    # The two proposals do not overlap: every (proposal, class) above the threshold survives.
    assert len(scores[0]) == int((expected > heads.score_thresh).sum()) == 2 * C
    for box, score, label in zip(boxes[0], scores[0], labels[0], strict=True):
        row = 0 if torch.equal(box, proposals[0]) else 1
        torch.testing.assert_close(box, proposals[row])
        torch.testing.assert_close(score, expected[row, label - 1])


def test_postprocess_nms_threshold_and_top_k():
    proposals = torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 20.0, 50.0, 70.0]])
    iou = 30.0 / 70.0  # overlap 50x30 over union 50x70: between 0.3 and 0.5
    assert ENH_NMS_IOU < iou < NMS_IOU
    logits = torch.tensor([[3.0, -9.0, -9.0, -9.0], [2.0, -9.0, -9.0, -9.0]])
    kept = {}
    for enh in (False, True):
        heads = build_model("tiny", C, make_loss("gumbel"), enh=enh).eval().roi_heads
        _, _, labels = heads.postprocess_detections(
            logits, torch.zeros(2, 4 * C), [proposals], [(128, 128)]
        )
        kept[enh] = labels[0][labels[0] == 1].numel()
    assert kept == {False: 2, True: 1}
    # Nothing is suppressed at IoU 0.5 here: top-k keeps the 3 best of the 6 detections.
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0], [0.8, 0.3, -0.2, -1.0]])
    heads = build_model("tiny", C, make_loss("gumbel"), detections_per_img=3).eval().roi_heads
    _, scores, _ = heads.postprocess_detections(
        logits, torch.zeros(2, 4 * C), [proposals], [(128, 128)]
    )
    best = independent_scores("gumbel", logits).flatten().sort(descending=True).values[:3]
    torch.testing.assert_close(scores[0], best)


@pytest.mark.parametrize("name", ["gumbel", "gol", "sigmoid", "softmax"])
def test_classifier_initialised_as_the_loss_prescribes(name):
    loss = make_loss(name)
    layer = build_model("tiny", C, loss).roi_heads.box_predictor.cls_score
    assert layer.out_features == (C + 1 if name in {"gumbel", "sigmoid", "softmax"} else C)
    if name in {"gumbel", "gol"}:
        assert torch.all(layer.weight == 0.001)
        torch.testing.assert_close(
            layer.bias, torch.full_like(layer.bias, -math.log(math.log(C + 1)))
        )
    elif name == "sigmoid":
        torch.testing.assert_close(layer.bias, torch.full_like(layer.bias, -math.log(99.0)))
    else:
        assert torch.all(layer.bias == 0)


def test_class_logits_callback_sees_the_loss_inputs():
    loss = make_loss("gumbel")
    model = build_model("tiny", C, loss)
    assert isinstance(model.roi_heads, LossRoIHeads) and not model.roi_heads.class_logits_hooks
    seen = {}

    def record(logits, labels):
        seen["logits"], seen["labels"] = logits, labels

    model.roi_heads.register_class_logits_hook(record)
    images, targets = make_batch()
    losses = model(images, targets)
    logits, labels = seen["logits"], seen["labels"]
    assert logits.shape == (labels.numel(), C + 1) and logits.requires_grad
    assert labels.numel() <= 2 * PRESETS["tiny"].box_batch_size_per_image
    # Ground-truth boxes are proposals too: classes 1 and 3 appear as 0 and 2, background as C.
    assert set(labels.tolist()) == {0, 2, C}
    torch.testing.assert_close(losses["loss_classifier"], loss(logits.detach(), labels))


def test_presets_wire_through():
    model = build_model("r50-fpn", C, make_loss("softmax"))
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert model.backbone.body.layer3[5].conv1.in_channels == 1024  # ResNet-50
    # From scratch: regular BatchNorm, every layer trains.
    assert all(p.requires_grad for p in model.backbone.parameters())
    tiny = build_model("tiny", C, make_loss("softmax"))
    assert tiny.transform.min_size == (128,) and tiny.transform.max_size == 128
    with pytest.raises(InputError, match="unknown model preset"):
        build_model("r18-fpn", C, make_loss("softmax"))


def test_the_resnext_preset_is_torchvisions_32x8d_with_the_r50_recipe():
    from torchvision.models import resnext101_32x8d

    model = build_model("x101-fpn", C, make_loss("gumbel"))
    body = model.backbone.body
    block = body.layer3[22]  # 23 blocks in layer3: a 101-layer network
    assert block.conv2.groups == 32 and block.conv2.in_channels == 32 * 8 * 4  # 32 x 8d, stage 3
    reference = resnext101_32x8d(weights=None)
    ours = {k: v.shape for k, v in body.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs  # torchvision's ImageNet weights load as a backbone file
    assert model.backbone.fpn.inner_blocks[3][0].in_channels == 2048
    assert model.transform.min_size == (800,)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    # one training step, on small images so that the CPU takes a second
    model.transform.min_size, model.transform.max_size = (96,), 96
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0]])
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 12:70, 10:60] = 1
    target = {"boxes": boxes, "labels": torch.tensor([2]), "masks": masks}
    losses = model.train()([torch.rand(3, 96, 96)], [target])
    sum(losses.values()).backward()
    assert body.layer4[2].conv3.weight.grad.abs().sum() > 0


def test_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_model("tiny", C, make_loss("gumbel"), weights=tmp_path / "none.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read") as error:
        build_model("tiny", C, make_loss("gumbel"), weights=corrupt)
    assert "\n" not in str(error.value)


def test_torchvision_backbone_state_dict_loads(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    preset = dataclasses.replace(PRESETS["tiny"], backbone_width=64, trainable_backbone_layers=3)
    model = build_model(preset, C, make_loss("gumbel"), weights=path)
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    # The same ResNet-18 file does not fit the half-width tiny backbone.
    with pytest.raises(InputError, match="does not fit the backbone") as error:
        build_model("tiny", C, make_loss("gumbel"), weights=path)
    assert "\n" not in str(error.value)


def test_full_model_checkpoint_round_trip(tmp_path):
    trained = build_model("tiny", C, make_loss("sigmoid"))
    trained(*make_batch())  # one training forward updates the BatchNorm statistics
    path = tmp_path / "model.pth"
    torch.save({"model": trained.state_dict(), "iteration": 1}, path)
    loaded = build_model("tiny", C, make_loss("sigmoid"), weights=path)
    expected = trained.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    with pytest.raises(InputError, match="does not fit the model"):
        build_model("tiny", C + 1, build_loss("sigmoid", C + 1), weights=path)


def test_images_without_objects_or_detections():
    model = build_model("tiny", C, make_loss("gol"), score_thresh=1.0)
    images = [torch.rand(3, 100, 120), torch.rand(3, 128, 128)]
    empty = [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, *image.shape[1:], dtype=torch.uint8),
        }
        for image in images
    ]
    losses = model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0
    # No score exceeds 1: nothing is detected, and the outputs are empty but well formed.
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, image in zip(outputs, images, strict=True):
        assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 1, *image.shape[1:])


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "gumbel"])
def test_under_bfloat16_autocast_boxes_scores_and_losses_stay_float32(name):
    """Autocast computes the convolutions and matrix products in bfloat16; the proposals (the
    RPN head's outputs), the RoI sample positions, the losses, the boxes, the scores and the
    masks stay float32, and the detections are those of float32 up to the rounding."""
    torch.manual_seed(0)
    model = build_model("tiny", C, make_loss(name))
    images, targets = make_batch()
    seen = {}

    def record(module, args):
        seen["features"] = next(iter(args[0].values())).dtype
        seen["proposals"] = {p.dtype for p in args[1]}

    model.roi_heads.register_forward_pre_hook(record)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert seen == {"features": torch.bfloat16, "proposals": {torch.float32}}
    assert {v.dtype for v in losses.values()} == {torch.float32}
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
    with torch.no_grad():
        exact = model(images)
    for out, ref in zip(outputs, exact, strict=True):
        assert {out[k].dtype for k in ("boxes", "scores", "masks")} == {torch.float32}
        top = min(len(out["scores"]), len(ref["scores"]), 5)
        assert top > 0
        torch.testing.assert_close(out["scores"][:top], ref["scores"][:top], rtol=0.05, atol=1e-3)

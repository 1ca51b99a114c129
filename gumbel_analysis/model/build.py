"""Mask R-CNN with FPN (or Cascade Mask R-CNN, ``model/cascade.py``) from a preset and a
classification loss of the registry.

Everything is built from torchvision's public modules with ``weights=None``: nothing is ever
downloaded. Backbone or model weights come from a local file (``--weights PATH``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.model.cascade import (
    CASCADE_BOX_WEIGHTS,
    CASCADE_IOUS,
    CASCADE_LOSS_WEIGHTS,
    CascadeRoIHeads,
    CascadeStage,
    HTCRoIHeads,
)
from gumbel_analysis.model.disalign import DisAlignBoxPredictor, freeze_all_but_the_alignment
from gumbel_analysis.model.feature_memory import FeatureMemory
from gumbel_analysis.model.heads import BoxPredictor, DecoupledBoxHead, LossRoIHeads
from gumbel_analysis.model.mask_predictor import CosineConv1x1
from gumbel_analysis.model.roi_align import GatherMultiScaleRoIAlign
from gumbel_analysis.spec.presets import BASIC_BLOCK_DEPTHS, PRESETS, Preset

#: Test NMS IoU of torchvision / the paper's baseline, and of the paper's enhancements.
NMS_IOU = 0.5
ENH_NMS_IOU = 0.3
_BACKBONE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise InputError(
            f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}"
        ) from None


def build_backbone(preset: Preset, pretrained: bool) -> BackboneWithFPN:
    """ResNet + FPN, randomly initialised; frozen BN and frozen early stages if ``pretrained``."""
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if preset.backbone in BASIC_BLOCK_DEPTHS and (
        preset.backbone_width != 64 or not hasattr(resnet, preset.backbone)
    ):
        body = basic_block_resnet(
            BASIC_BLOCK_DEPTHS[preset.backbone], preset.backbone_width, norm_layer
        )
    elif preset.backbone in resnet.__all__ and preset.backbone[0].islower():
        body = getattr(resnet, preset.backbone)(weights=None, norm_layer=norm_layer)
    else:
        raise InputError(f"unknown backbone {preset.backbone!r}; use a torchvision ResNet name")
    if pretrained:
        trainable = _BACKBONE_LAYERS[: preset.trainable_backbone_layers]
        for name, parameter in body.named_parameters():
            if not name.startswith(trainable) and not (
                preset.trainable_backbone_layers == 5 and name.startswith("bn1")
            ):
                parameter.requires_grad_(False)
    stage2_channels = body.inplanes // 8  # the first stage's output channels
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(preset.returned_layers)},
        in_channels_list=[stage2_channels * 2 ** (k - 1) for k in preset.returned_layers],
        out_channels=preset.fpn_channels,
    )


def basic_block_resnet(
    depths: tuple[int, ...], width: int, norm_layer: type[nn.Module]
) -> resnet.ResNet:
    """A torchvision ResNet of BasicBlocks with ``depths`` blocks per stage and stage widths
    ``width * (1, 2, 4, 8)``; same module names as torchvision's, so its state dicts fit when
    ``width`` is 64."""
    body = resnet.ResNet(resnet.BasicBlock, list(depths), norm_layer=norm_layer)
    body.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = norm_layer(width)
    inplanes = width
    for stage, blocks in enumerate(depths, start=1):
        planes, stride = width * 2 ** (stage - 1), 1 if stage == 1 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), norm_layer(planes)
            )
        layers = [resnet.BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
        layers += [
            resnet.BasicBlock(planes, planes, norm_layer=norm_layer) for _ in range(blocks - 1)
        ]
        setattr(body, f"layer{stage}", nn.Sequential(*layers))
        inplanes = planes
    body.fc = nn.Linear(inplanes, body.fc.out_features)
    body.inplanes = inplanes
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return body


def build_model(
    preset: str | Preset,
    num_classes: int,
    loss: ClassificationLoss,
    *,
    enh: bool = False,
    weights: str | Path | None = None,
    score_thresh: float = 1e-4,
    detections_per_img: int = 300,
    seed: int = 0,
) -> MaskRCNN:
    """torchvision Mask R-CNN (FPN) whose box classifier is trained and scored by ``loss``.

    ``num_classes`` is C, the foreground classes; targets and outputs use torchvision's labels
    (1..C, 0 = background). ``enh`` switches on the paper's enhancements: test NMS IoU 0.3 instead
    of 0.5 and a normalised (cosine, T = 20) mask predictor. ``weights`` is a local file holding
    either a backbone state dict (e.g. torchvision's ImageNet ResNet ``.pth``) or a full model
    checkpoint (a state dict with ``backbone.``/``roi_heads.`` keys, possibly under ``"model"``);
    with weights the backbone uses frozen BatchNorm and ``preset.trainable_backbone_layers``.
    ``seed`` (the run's) seeds the draws of a loss's feature memory (LOCE's MFS), if it has one.
    """
    preset = get_preset(preset)
    if loss.num_classes != num_classes:
        raise ValueError(f"the loss has {loss.num_classes} classes, the model {num_classes}")
    if preset.decoupled_box_head and loss.adjusts_logits:
        raise InputError(f"--preset {preset.name}: --loss {loss.name} needs the shared box head")
    state = read_weights(weights) if weights is not None else None
    backbone = build_backbone(preset, pretrained=state is not None)
    channels = preset.fpn_channels
    levels = len(preset.anchor_sizes)
    mask_predictor = _mask_predictor(preset, num_classes, enh)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=preset.min_size,
        max_size=preset.max_size,
        rpn_anchor_generator=AnchorGenerator(
            sizes=tuple((s,) for s in preset.anchor_sizes),
            aspect_ratios=((0.5, 1.0, 2.0),) * levels,
        ),
        rpn_pre_nms_top_n_train=preset.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=preset.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=preset.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=preset.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=preset.rpn_batch_size_per_image,
        box_roi_pool=GatherMultiScaleRoIAlign(
            preset.featmap_names, output_size=7, sampling_ratio=preset.roi_sampling_ratio
        ),
        box_head=_box_head(preset),
        box_predictor=(
            DisAlignBoxPredictor(preset.box_representation_size, loss)
            if loss.adjusts_logits
            else BoxPredictor(
                preset.box_representation_size, loss, decoupled=preset.decoupled_box_head
            )
        ),
        mask_roi_pool=GatherMultiScaleRoIAlign(
            preset.featmap_names,
            output_size=preset.mask_roi_size,
            sampling_ratio=preset.roi_sampling_ratio,
        ),
        mask_head=MaskRCNNHeads(channels, list(preset.mask_head_channels), 1),
        mask_predictor=mask_predictor,
    )
    tv_heads = model.roi_heads
    heads_kwargs: dict[str, Any] = dict(
        box_roi_pool=tv_heads.box_roi_pool,
        box_head=tv_heads.box_head,
        box_predictor=tv_heads.box_predictor,
        batch_size_per_image=preset.box_batch_size_per_image,
        positive_fraction=0.25,
        score_thresh=score_thresh,
        nms_thresh=ENH_NMS_IOU if enh else NMS_IOU,
        detections_per_img=detections_per_img,
        mask_roi_pool=tv_heads.mask_roi_pool,
        mask_head=tv_heads.mask_head,
        mask_predictor=tv_heads.mask_predictor,
    )
    if preset.cascade_stages:
        model.roi_heads = _cascade_heads(preset, loss, heads_kwargs, enh)
    else:
        model.roi_heads = LossRoIHeads(
            loss, fg_iou_thresh=0.5, bg_iou_thresh=0.5, bbox_reg_weights=None, **heads_kwargs
        )
    if loss.feature_memory_options is not None:
        model.roi_heads.feature_memory = FeatureMemory(
            num_classes, **loss.feature_memory_options, seed=seed
        )
    # Under autocast the RPN head's deltas would be half precision, and torchvision decodes the
    # proposals in their dtype: boxes rounded to 0.5 px at 128 px (bfloat16), the box targets
    # with them. Its outputs in float32 keep every box computation in float32.
    model.rpn.head.register_forward_hook(_outputs_in_float32)
    if state is not None:
        load_weights(model, state, Path(weights))
    if loss.adjusts_logits:  # DisAlign's second stage: the first stage's model, frozen
        freeze_all_but_the_alignment(model)
    return model


def _box_head(preset: Preset) -> nn.Module:
    """torchvision's ``TwoMLPHead`` on the 7 x 7 pooled features, or two of them (decoupled)."""
    head = DecoupledBoxHead if preset.decoupled_box_head else TwoMLPHead
    return head(preset.fpn_channels * 7**2, preset.box_representation_size)


def _mask_predictor(preset: Preset, num_classes: int, enh: bool) -> nn.Module:
    """torchvision's mask predictor (deconvolution, 1x1 logits), cosine logits with ``enh``."""
    mask_channels = preset.mask_head_channels[-1]
    predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    if enh:
        predictor.mask_fcn_logits = CosineConv1x1(mask_channels, num_classes)
    return predictor


def _cascade_heads(
    preset: Preset, loss: ClassificationLoss, heads_kwargs: dict[str, Any], enh: bool
) -> CascadeRoIHeads:
    """The cascade's RoI heads: ``loss`` is the last stage's; the earlier stages get copies
    (their own statistics), each its box head and class-agnostic predictor (and, for HTC, its
    mask head, predictor and information-flow convolution)."""
    if loss.feature_memory_options is not None or loss.adjusts_logits:
        raise InputError(
            f"--preset {preset.name}: --loss {loss.name} with MFS or a second stage needs Mask "
            "R-CNN's heads"
        )
    stages = preset.cascade_stages
    channels, size = preset.fpn_channels, preset.box_representation_size
    earlier = []
    for _ in range(stages - 1):
        stage_loss = copy.deepcopy(loss)
        earlier.append(
            CascadeStage(
                TwoMLPHead(channels * 7**2, size),
                BoxPredictor(size, stage_loss, class_agnostic=True),
                stage_loss,
            )
        )
    heads_kwargs["box_predictor"] = BoxPredictor(size, loss, class_agnostic=True)
    heads_kwargs.update(
        ious=CASCADE_IOUS[:stages],
        box_weights=CASCADE_BOX_WEIGHTS[:stages],
        loss_weights=CASCADE_LOSS_WEIGHTS[:stages],
    )
    if not preset.htc:
        return CascadeRoIHeads(loss, earlier, **heads_kwargs)
    mask_channels = list(preset.mask_head_channels)
    masks = [
        (MaskRCNNHeads(channels, mask_channels, 1), _mask_predictor(preset, loss.num_classes, enh))
        for _ in range(stages - 1)
    ]
    flows = [
        nn.Sequential(nn.Conv2d(mask_channels[-1], channels, 1), nn.ReLU(inplace=False))
        for _ in range(stages - 1)
    ]
    return HTCRoIHeads(loss, earlier, masks, flows, **heads_kwargs)


def _outputs_in_float32(module: nn.Module, inputs: Any, outputs: Any) -> Any:
    """A forward hook: the RPN head's (objectness, deltas) lists of tensors as float32."""
    return tuple([t.float() for t in group] for group in outputs)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local ``.pth`` file (unwrapping ``{"model": ...}``/``{"state_dict":
    ...}``); tensors only, nothing executed (``weights_only``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"weights file {path} does not exist")
    if not path.is_file():
        raise InputError(f"weights file {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"cannot read weights file {path}: {first_line}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise InputError(f"weights file {path} holds no state dict")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights file {path} holds something other than a state dict of tensors")
    return state


def load_weights(model: MaskRCNN, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a full model state dict, or a backbone one (ResNet keys, ``fc.*`` ignored)."""
    if any(k.startswith(("backbone.", "roi_heads.", "rpn.")) for k in state):
        _check_compatible(model, state, path, "the model", ignored=())
        model.load_state_dict(state, strict=False)
    else:
        body = model.backbone.body
        _check_compatible(body, state, path, "the backbone", ignored=("fc.",))
        body.load_state_dict(state, strict=False)


def _check_compatible(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    what: str,
    ignored: tuple[str, ...],
) -> None:
    """Raise one-line InputErrors for missing, unexpected or mis-shaped weights.

    ``num_batches_tracked`` counters are ignored: frozen BatchNorm has none, regular BatchNorm
    restores a missing one.
    """

    def relevant(key: str) -> bool:
        return not key.endswith("num_batches_tracked") and not key.startswith(ignored)

    expected = {k: v.shape for k, v in module.state_dict().items() if relevant(k)}
    given = {k: v.shape for k, v in state.items() if relevant(k)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise InputError(
            f"weights file {path} does not fit {what}: {len(missing)} weights missing, "
            f"{len(unexpected)} unexpected ({detail})"
        )
    for key, shape in expected.items():
        if given[key] != shape:
            raise InputError(
                f"weights file {path} does not fit {what}: {key} has shape "
                f"{tuple(given[key])}, expected {tuple(shape)}"
            )

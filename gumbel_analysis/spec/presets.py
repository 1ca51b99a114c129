"""The presets: a Mask R-CNN architecture and its training recipe, declared once, as data.

``gumbel train --preset NAME`` (its choices and help), the run configuration's defaults
(:mod:`gumbel_analysis.spec.config`) and the model builder (``model/build.py``) all read
:data:`PRESETS`. No torch here.

Adding a preset: one :class:`Preset` in :data:`PRESETS` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Learning-rate steps (in epochs) and length of the paper's schedules.
SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22))}


@dataclass(frozen=True)
class Recipe:
    """A preset's training and test defaults; a run's options override them."""

    batch_size: int = 2  # per process
    epochs: int = 12
    lr_steps: tuple[int, ...] = (8, 11)
    warmup_iters: int = 500
    base_lr: float = 0.02  # for a total batch of 16, scaled linearly
    workers: int = 4
    # Test time as LVIS evaluates (detectron2's LVIS configs): score > 1e-4, 300 per image.
    score_threshold: float = 1e-4
    max_dets: int = 300


#: Blocks per stage of the ResNets made of BasicBlocks (resnet10 is not in torchvision).
BASIC_BLOCK_DEPTHS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@dataclass(frozen=True)
class Preset:
    """Architecture and sampling sizes of a Mask R-CNN + FPN.

    ``backbone`` names a torchvision ResNet constructor. ``returned_layers`` are the ResNet stages
    (1-4) fed to the FPN, which adds a max-pooled level on top; ``anchor_sizes`` has one size per
    FPN level (stages + pool). RPN top-n values are per FPN level before NMS and per image after,
    as in torchvision. ``trainable_backbone_layers`` (0-5, from layer4 down) applies when
    backbone weights are loaded; the backbone then uses frozen BatchNorm. From scratch, every
    layer trains and BatchNorm is a regular one (torchvision's rule).
    """

    name: str
    backbone: str
    #: Channels of the ResNet stem and first stage (doubled per stage); 64 is torchvision's.
    #: Other widths build the same BasicBlock network, thinner (resnet10/18/34 only).
    backbone_width: int = 64
    fpn_channels: int = 256
    returned_layers: tuple[int, ...] = (1, 2, 3, 4)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    min_size: int = 800
    max_size: int = 1333
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_representation_size: int = 1024
    mask_head_channels: tuple[int, ...] = (256, 256, 256, 256)
    #: RoIAlign size of the mask branch; masks are twice as large.
    mask_roi_size: int = 14
    #: RoIAlign samples per bin and axis (torchvision: 2). RoIAlign's backward on the CPU is
    #: single-threaded and costs in proportion to its square.
    roi_sampling_ratio: int = 2
    trainable_backbone_layers: int = 3
    #: Box stages of a Cascade Mask R-CNN (``model/cascade.py``; IoU 0.5, 0.6, 0.7), 0 for Mask
    #: R-CNN's single head.
    cascade_stages: int = 0
    #: Hybrid Task Cascade: the cascade with a mask stage after each box stage and the mask
    #: information flow (``model/cascade.py``, ``HTCRoIHeads``).
    htc: bool = False
    #: The classifier and the box regressor each on a box head of its own instead of one shared
    #: ``TwoMLPHead`` (``model/heads.py: DecoupledBoxHead``): a diagnostic layout (issue 21,
    #: docs/reproduce.md), not the paper's; Mask R-CNN only.
    decoupled_box_head: bool = False
    #: Training and test defaults (the paper's r50/r101 recipe unless the preset says otherwise:
    #: batch 16 over 8 GPUs, 500 warm-up iterations).
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        if len(self.anchor_sizes) != len(self.returned_layers) + 1:
            raise ValueError("anchor_sizes needs one size per returned layer plus the pool level")
        if not set(self.returned_layers) <= {1, 2, 3, 4}:
            raise ValueError(f"returned_layers must lie in 1..4, got {self.returned_layers}")
        if self.backbone_width != 64 and self.backbone not in BASIC_BLOCK_DEPTHS:
            raise ValueError(f"backbone_width applies to {', '.join(BASIC_BLOCK_DEPTHS)} only")
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ValueError("trainable_backbone_layers must lie in 0..5")
        if not 0 <= self.cascade_stages <= 3:
            raise ValueError("cascade_stages must lie in 0..3")
        if self.htc and not self.cascade_stages:
            raise ValueError("htc needs cascade_stages")
        if self.decoupled_box_head and self.cascade_stages:
            raise ValueError("decoupled_box_head is for Mask R-CNN's single box head")

    @property
    def featmap_names(self) -> list[str]:
        """Names of the FPN levels the RoI heads pool from (the pool level is excluded)."""
        return [str(i) for i in range(len(self.returned_layers))]


PRESETS: dict[str, Preset] = {
    # The CPU preset: a ResNet-18 at half width (4 M parameters in all), a 64-channel FPN, thin
    # heads, 128 px images, few proposals: about 0.22 s per 4-image SGD step on one CPU core.
    "tiny": Preset(
        name="tiny",
        backbone="resnet18",
        backbone_width=32,
        fpn_channels=64,
        returned_layers=(1, 2, 3, 4),
        anchor_sizes=(8, 16, 32, 64, 128),
        min_size=128,
        max_size=128,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=200,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_representation_size=256,
        mask_head_channels=(64, 64),
        mask_roi_size=14,
        roi_sampling_ratio=1,
        trainable_backbone_layers=5,
        # Trains from scratch on the synthetic data in minutes; its schedule is its own.
        recipe=Recipe(batch_size=4, warmup_iters=100, workers=1),
    ),
    # The paper's: shorter side 800, longer at most 1333, 512 RoIs per image.
    "r50-fpn": Preset(name="r50-fpn", backbone="resnet50"),
    "r101-fpn": Preset(name="r101-fpn", backbone="resnet101"),
    # Table 3's ResNeXt-101 32x8d: the same recipe, torchvision's resnext101_32x8d.
    "x101-fpn": Preset(name="x101-fpn", backbone="resnext101_32x8d"),
}
# The tiny preset with the classifier and the regressor on separate box heads: the box-AP
# diagnosis of docs/reproduce.md (does the classification loss's gradient, through the shared
# head, cost the regressor?).
PRESETS["tiny-decoupled"] = replace(PRESETS["tiny"], name="tiny-decoupled", decoupled_box_head=True)
# Table 3's Cascade Mask R-CNN and Hybrid Task Cascade: three stages on each backbone (tiny: on
# the CPU).
PRESETS.update(
    {
        f"{kind}-{name}": replace(
            PRESETS[name], name=f"{kind}-{name}", cascade_stages=3, htc=kind == "htc"
        )
        for kind in ("cascade", "htc")
        for name in ("tiny", "r50-fpn", "r101-fpn")
    }
)

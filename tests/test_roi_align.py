"""The gather RoIAlign against torchvision's MultiScaleRoIAlign: values and gradients."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from gumbel_analysis.model.roi_align import GatherMultiScaleRoIAlign

IMAGES = [(512, 512), (480, 384)]


def features_and_boxes(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = OrderedDict(
        (
            str(i),
            torch.randn(
                2, 5, 512 // 2 ** (i + 2), 512 // 2 ** (i + 2), generator=generator, dtype=dtype
            ),
        )
        for i in range(4)
    )
    boxes = []
    for count in (40, 25):
        corner = torch.rand(count, 2, generator=generator, dtype=dtype) * 540 - 20
        size = torch.rand(count, 2, generator=generator, dtype=dtype) ** 2 * 500 + 0.2
        boxes.append(torch.cat([corner, corner + size], 1))
    boxes[0][0] = torch.tensor([0.0, 0.0, 0.3, 0.4])  # below one pixel: a 1 x 1 bin
    boxes[1][0] = torch.tensor([511.0, 470.0, 700.0, 900.0])  # past the edge
    return features, boxes


@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 1), (14, 1), (7, 2)])
def test_gather_roi_align_equals_torchvisions_in_float64(output_size, sampling_ratio):
    names = list("0123")
    ours = GatherMultiScaleRoIAlign(names, output_size, sampling_ratio)
    theirs = MultiScaleRoIAlign(names, output_size, sampling_ratio)
    features, boxes = features_and_boxes(torch.float64)
    for f in features.values():
        f.requires_grad_(True)
    a, b = ours(features, boxes, IMAGES), theirs(features, boxes, IMAGES)
    assert a.shape == b.shape == (65, 5, output_size, output_size)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(a)
    grads_a = torch.autograd.grad(a, list(features.values()), upstream)
    grads_b = torch.autograd.grad(b, list(features.values()), upstream)
    assert sum(bool(g.abs().sum() > 0) for g in grads_b) >= 2  # boxes on two levels at least
    for g_a, g_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(g_a, g_b, rtol=1e-10, atol=1e-12)


def test_gather_roi_align_in_float32_and_single_level_and_adaptive_fallback():
    features, boxes = features_and_boxes(torch.float32, seed=3)
    for names, ratio in ((list("0123"), 1), (["0"], 1), (list("0123"), 0)):
        ours = GatherMultiScaleRoIAlign(names, 7, ratio)(features, boxes, IMAGES)
        theirs = MultiScaleRoIAlign(names, 7, ratio)(features, boxes, IMAGES)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_no_boxes():
    features, boxes = features_and_boxes(torch.float32)
    out = GatherMultiScaleRoIAlign(list("0123"), 7, 1)(features, [b[:0] for b in boxes], IMAGES)
    assert out.shape == (0, 5, 7, 7)


def test_gather_roi_align_of_bfloat16_features_samples_in_float32():
    """Under autocast the features are bfloat16: the samples are placed and weighted in float32
    (as torchvision's RoIAlign under autocast), so the result is torchvision's on the same
    features in float32, rounded once to bfloat16."""
    features, boxes = features_and_boxes(torch.float32, seed=5)
    half = OrderedDict((k, v.to(torch.bfloat16)) for k, v in features.items())
    ours = GatherMultiScaleRoIAlign(list("0123"), 7, 1)(half, boxes, IMAGES)
    exact = MultiScaleRoIAlign(list("0123"), 7, 1)(
        OrderedDict((k, v.float()) for k, v in half.items()), boxes, IMAGES
    )
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), exact.to(torch.bfloat16).float(), rtol=0, atol=0)

"""Cascade Mask R-CNN's heads (model/cascade.py): one stage is Mask R-CNN's head, a later
stage's matching and targets against an independent float64 computation, the boxes moved
between stages, the test-time mean of the stages' scores, and every loss training it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import available_losses, build_loss, loss_entry
from gumbel_analysis.model import PRESETS, build_model
from gumbel_analysis.model.cascade import CascadeRoIHeads
from tests.test_model import FREQUENCY, make_batch

C = 3


def make_loss(name: str, **options):
    return build_loss(name, C, FREQUENCY, ["r", "f", "f"], **options)


def cascade(stages: int, loss: str = "gumbel", **options):
    preset = dataclasses.replace(PRESETS["tiny"], name="cascade-test", cascade_stages=stages)
    return build_model(preset, C, make_loss(loss, **options))


def test_presets_build_three_stages_with_the_reference_settings():
    heads = build_model("cascade-tiny", C, make_loss("gumbel")).roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    assert [m.high_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert [c.weights for c in heads.coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert heads.loss_weights == (1.0, 0.5, 0.25)
    losses = [s.loss for s in heads.stages]
    assert len({id(x) for x in losses}) == 3 and losses[-1] is heads.classification_loss
    for stage in heads.stages:  # class-agnostic boxes; the Gumbel bias in every classifier
        assert stage.box_predictor.bbox_pred.out_features == 4
        bias = stage.box_predictor.cls_score.bias
        torch.testing.assert_close(bias, heads.box_predictor.cls_score.bias)
    assert {"cascade-r50-fpn", "cascade-r101-fpn"} <= set(PRESETS)
    with pytest.raises(InputError, match="Mask R-CNN's heads"):
        build_model("cascade-tiny", C, make_loss("loce", loce_mfs=True))
    from gumbel_analysis.spec.config import TrainConfig

    with pytest.raises(InputError, match="--loce-mfs needs Mask R-CNN's heads"):
        TrainConfig(preset="cascade-tiny", loss="loce", loss_options={"loce_mfs": True})
    with pytest.raises(InputError, match="--loss disalign needs Mask R-CNN's heads"):
        TrainConfig(preset="cascade-tiny", loss="disalign", from_run="/x")


def test_one_stage_is_mask_rcnns_head_with_its_regression_shared_by_the_classes():
    torch.manual_seed(0)
    plain = build_model("tiny", C, make_loss("gumbel"))
    one = cascade(1)
    state = plain.state_dict()
    agnostic = one.roi_heads.box_predictor.bbox_pred
    for k in ("weight", "bias"):  # every class's deltas are the cascade's one set
        state[f"roi_heads.box_predictor.bbox_pred.{k}"] = getattr(agnostic, k).data.repeat(
            C, *[1] * (1 if k == "weight" else 0)
        )
    plain.load_state_dict(state)
    regression = "roi_heads.box_predictor.bbox_pred."
    one_state = {k: v for k, v in state.items() if not k.startswith(regression)}
    missing, unexpected = one.load_state_dict(one_state, strict=False)
    assert not unexpected and all(k.startswith(regression) for k in missing)
    images, targets = make_batch()
    for model in (plain, one):
        model.train()
    torch.manual_seed(5)
    want = plain(images, targets)
    torch.manual_seed(5)
    got = one(images, targets)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    plain.eval(), one.eval()
    with torch.no_grad():
        a, b = plain(images), one(images)
    for x, y in zip(a, b, strict=True):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(y[key], x[key])
        assert len(x["scores"]) > 0


def iou(a, b):
    """[A, B] IoU, float64 numpy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def encode(gt, boxes, weights):
    """The stage's regression targets, float64 numpy (R-CNN's deltas with its weights)."""
    wx, wy, ww, wh = weights
    pw, ph = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    px, py = boxes[:, 0] + 0.5 * pw, boxes[:, 1] + 0.5 * ph
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * np.log(gw / pw), wh * np.log(gh / ph)], 1
    )


def test_a_later_stage_matches_at_its_iou_and_encodes_with_its_weights():
    heads = cascade(3).roi_heads
    heads.fg_bg_sampler = BalancedPositiveNegativeSampler(10_000, 0.99)  # keep every RoI
    rng = np.random.default_rng(3)
    gt = np.array([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 100.0, 90.0]])
    proposals = []
    for g in gt:  # around each truth, from IoU ~0.3 to ~1
        for _ in range(12):
            jitter = rng.uniform(-0.35, 0.35, 4) * np.tile(g[2:] - g[:2], 2)
            proposals.append(g + jitter)
    proposals = np.array(proposals)
    targets = [{"boxes": torch.tensor(gt), "labels": torch.tensor([2, 3])}]
    stage = heads.stages[1]
    boxes, _, labels, regression, is_gt = heads.sample_stage(
        [torch.tensor(proposals)], targets, stage
    )
    every = np.concatenate([proposals, gt])
    overlap = iou(gt, every)
    best, which = overlap.max(0), overlap.argmax(0)
    want_labels = np.where(best >= 0.6, np.array([2, 3])[which], 0)
    assert 0 < (want_labels > 0).sum() < len(every)  # both sides of 0.6 occur
    np.testing.assert_array_equal(boxes[0].numpy(), every)
    np.testing.assert_array_equal(labels[0].numpy(), want_labels)
    np.testing.assert_array_equal(is_gt[0].numpy(), np.arange(len(every)) >= len(proposals))
    want = encode(gt[which], every, (20.0, 20.0, 10.0, 10.0))
    fg = want_labels > 0  # only the foreground's targets are trained
    np.testing.assert_allclose(regression[0].numpy()[fg], want[fg], rtol=1e-6, atol=1e-6)


def test_the_next_stage_starts_from_the_boxes_moved_and_clipped():
    heads = cascade(3).roi_heads
    stage = heads.stages[0]
    boxes = np.array([[10.0, 10.0, 50.0, 60.0], [70.0, 5.0, 95.0, 40.0]])
    deltas = np.array([[1.0, -2.0, 0.3, -0.1], [3.0, 0.5, 0.8, 0.2]])
    moved = heads._moved(stage, torch.tensor(deltas), [torch.tensor(boxes)], [(64, 100)])[0]
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = boxes[:, 0] + 0.5 * w + deltas[:, 0] / 10 * w
    cy = boxes[:, 1] + 0.5 * h + deltas[:, 1] / 10 * h
    nw, nh = w * np.exp(deltas[:, 2] / 5), h * np.exp(deltas[:, 3] / 5)
    want = np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], 1)
    want[:, 0::2] = want[:, 0::2].clip(0, 100)
    want[:, 1::2] = want[:, 1::2].clip(0, 64)
    np.testing.assert_allclose(moved.numpy(), want, rtol=1e-6)
    assert (want[:, 2] == 100).any()  # the clip is exercised


def test_test_time_scores_are_the_mean_of_the_stages_probabilities():
    model = cascade(3, "sigmoid").eval()
    biases = (-1.0, 0.5, 2.0)
    for stage, b in zip(model.roi_heads.stages, biases, strict=True):
        torch.nn.init.zeros_(stage.box_predictor.cls_score.weight)
        torch.nn.init.constant_(stage.box_predictor.cls_score.bias, b)
    images, _ = make_batch()
    with torch.no_grad():
        out = model(images)
    want = float(np.mean([1 / (1 + np.exp(-b)) for b in biases]))
    scores = torch.cat([o["scores"] for o in out])
    assert len(scores) > 0
    torch.testing.assert_close(scores, torch.full_like(scores, want))
    assert abs(want - 1 / (1 + np.exp(-np.mean(biases)))) > 0.01  # not the mean of the logits


TRAINABLE = [n for n in available_losses() if not loss_entry(n).second_stage]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cascade-tiny", "htc-tiny"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_every_loss_trains_the_cascade_and_keeps_its_statistics_per_stage(name, preset):
    torch.manual_seed(1)
    model = build_model(preset, C, make_loss(name)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = {k: v.clone() for k, v in model.roi_heads.stages[0].loss.named_buffers()}
    images, targets = make_batch()
    for _ in range(2):
        losses = model(images, targets)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        for stage in model.roi_heads.stages:
            assert stage.box_predictor.cls_score.weight.grad.abs().sum() > 0
        optimizer.step()
    buffers = [dict(s.loss.named_buffers()) for s in model.roi_heads.stages]
    moved = [k for k, v in start.items() if not torch.equal(v, buffers[0][k])]  # statistics
    assert bool(moved) == (name in ("eqlv2", "seesaw", "loce")), moved
    for key in set(moved) & {"pos_grad", "neg_grad", "mean_score"}:  # scores, not counts
        assert not torch.equal(buffers[0][key], buffers[2][key]), key  # each stage its own


def test_grad_stage_picks_the_recorded_stage_and_the_log_says_which(tmp_path):
    import h5py

    from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
    from gumbel_analysis.engine.train import train
    from gumbel_analysis.spec.config import TrainConfig

    data = make_synthetic(
        tmp_path / "d",
        SyntheticSpec(classes=4, train_images=20, val_images=4, size=64),
        progress=False,
    )
    common = dict(data=str(data), preset="cascade-tiny", loss="eqlv2", max_iters=2, workers=0,
                  batch_size=4, grad_every=1, evaluate=False, device="cpu")  # fmt: skip
    sums = {}
    for stage in (1, 3):
        out = tmp_path / f"s{stage}"
        train(TrainConfig(out=str(out), grad_stage=stage, **common), progress=False)
        with h5py.File(out / "grads.h5") as f:
            assert f.attrs["stage"] == stage
            sums[stage] = f["negative_count"][:]
    assert not np.array_equal(sums[1], sums[3])  # EQLv2's weights of another stage
    with pytest.raises(InputError, match="--grad-stage 2: --preset tiny has one box head"):
        TrainConfig(preset="tiny", grad_stage=2)
    with pytest.raises(InputError, match="--grad-stage 4"):
        TrainConfig(preset="cascade-tiny", grad_stage=4)


# --- Hybrid Task Cascade ----------------------------------------------------------------------


def htc(loss: str = "gumbel"):
    return build_model("htc-tiny", C, make_loss(loss))


def test_htc_mask_stages_pass_their_features_on():
    from gumbel_analysis.model.cascade import HTCRoIHeads

    heads = htc().roi_heads
    assert isinstance(heads, HTCRoIHeads) and len(heads.earlier_mask_heads) == 2
    x = torch.randn(5, PRESETS["htc-tiny"].fpn_channels, 14, 14)
    feats = heads.mask_stage_features(x, 2)
    h = [*heads.earlier_mask_heads, heads.mask_head]
    f0 = h[0](x)
    f1 = h[1](x + torch.relu(heads.mask_flows[0][0](f0)))
    f2 = h[2](x + torch.relu(heads.mask_flows[1][0](f1)))
    for got, want in zip(feats, (f0, f1, f2), strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(f2, h[2](x))  # the flow changes the last stage's input


def test_htc_masks_are_the_mean_of_the_stages_probabilities():
    model = htc().eval()
    heads = model.roi_heads
    biases = (-2.0, 0.0, 1.5)
    predictors = [*heads.earlier_mask_predictors, heads.mask_predictor]
    for predictor, b in zip(predictors, biases, strict=True):
        torch.nn.init.zeros_(predictor.mask_fcn_logits.weight)
        torch.nn.init.constant_(predictor.mask_fcn_logits.bias, b)
    channels = PRESETS["htc-tiny"].fpn_channels
    features = {name: torch.randn(1, channels, 32 // 2**i, 32 // 2**i) for i, name in
                enumerate(PRESETS["htc-tiny"].featmap_names)}  # fmt: skip
    boxes = [torch.tensor([[2.0, 3.0, 40.0, 50.0], [10.0, 10.0, 30.0, 60.0]])]
    with torch.no_grad():
        masks = heads.mask_probabilities(features, boxes, [(128, 128)], torch.tensor([0, 2]))
    want = float(np.mean([1 / (1 + np.exp(-b)) for b in biases]))
    assert masks.shape == (2, 28, 28)
    torch.testing.assert_close(masks, torch.full_like(masks, want))


def test_htc_trains_each_mask_stage_on_the_rois_its_box_stage_moved(monkeypatch):
    torch.manual_seed(2)
    model = htc().train()
    heads = model.roi_heads
    calls = []
    sample = heads.sample_stage

    def recording(proposals, targets, stage):
        out = sample(proposals, targets, stage)
        calls.append(([p.clone() for p in proposals], stage, out))
        return out

    monkeypatch.setattr(heads, "sample_stage", recording)
    moved_by = []
    moved = heads._moved
    monkeypatch.setattr(heads, "_moved", lambda *a: moved_by.append(moved(*a)) or moved_by[-1])
    images, targets = make_batch()
    losses = model(images, targets)
    # box 1, mask 1, box 2, mask 2, box 3, mask 3: each mask stage samples at its box stage's IoU
    assert [c[1].matcher.high_threshold for c in calls] == [0.5, 0.5, 0.6, 0.6, 0.7, 0.7]
    for k in range(3):
        box_call, mask_call = calls[2 * k], calls[2 * k + 1]
        is_gt = box_call[2][4]
        for got, boxes, gt in zip(mask_call[0], moved_by[k], is_gt, strict=True):
            torch.testing.assert_close(got, boxes[~gt])  # the box stage's RoIs, moved
        if k < 2:  # and the next box stage starts from them too
            for got, want in zip(calls[2 * k + 2][0], mask_call[0], strict=True):
                torch.testing.assert_close(got, want)
    losses["loss_mask"].backward()
    for predictor in [*heads.earlier_mask_predictors, heads.mask_predictor]:
        assert predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert heads.mask_flows[0][0].weight.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cascade-r50-fpn", "htc-r101-fpn"])
def test_the_full_size_frameworks_take_a_training_step(preset):
    model = build_model(preset, C, make_loss("gumbel")).train()
    assert model.transform.min_size == (800,) and len(model.roi_heads.stages) == 3
    model.transform.min_size, model.transform.max_size = (128,), 128  # a second on the CPU
    images, targets = make_batch()
    losses = model(images, targets)
    sum(losses.values()).backward()
    for stage in model.roi_heads.stages:
        assert stage.box_predictor.cls_score.weight.grad.abs().sum() > 0

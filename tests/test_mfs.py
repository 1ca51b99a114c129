"""LOCE's memory-augmented feature sampling (model/feature_memory.py) against a float64 port of
its authors' code (``MFS.bbox_generator``, ``enqueue_dequeue``, ``_sampling_classes``,
``probabilistic_sampler`` and the mean-score update of ``LoceRoIHead`` with replayed rows), two
gloo ranks against one process, and the RoI heads replaying it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gumbel_analysis.losses import build_loss
from gumbel_analysis.losses.base import MEMORY_INSTANCE
from gumbel_analysis.model.feature_memory import (
    FeatureMemory,
    draw_classes,
    first_per_class,
    jittered_boxes,
    offset_signs,
)

C = 5


# --- Ports of the authors' MFS (numpy, float64) -----------------------------------------------


def authors_offset_matrix():
    rows = []
    for k in [8, 4, 2, 1]:
        rows.append(
            np.concatenate(
                [[-1.0 for j in range(k)] + [1.0 for j in range(k)] for i in range(16 // (2 * k))]
            )
        )
    return np.array(rows)


def authors_bbox_generator(boxes, random_matrix, img_shape):
    """``MFS.bbox_generator``'s proposals [G, 16, 4]; ``random_matrix`` its ``torch.rand``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    offset = (
        1.0 / 6 * authors_offset_matrix() * random_matrix * np.stack([w, h, w, h], -1)[..., None]
    )
    proposals = np.transpose(boxes[..., None] + offset, (0, 2, 1))
    x1, y1, x2, y2 = np.split(proposals, 4, axis=-1)
    x1 = np.clip(x1, 0, img_shape[1] - 1)
    y1 = np.clip(y1, 0, img_shape[0] - 1)
    x2 = np.clip(x2, 0, img_shape[1] - 1)
    y2 = np.clip(y2, 0, img_shape[0] - 1)
    return np.concatenate([x1, y1, x2, y2], -1)


class AuthorsQueue:
    """``enqueue_dequeue`` and the reading of ``probabilistic_sampler`` (features as ids)."""

    def __init__(self, num_classes, queue_size):
        self.q = queue_size
        self.feats = np.zeros((num_classes, queue_size))
        self.labels = -np.ones((num_classes, queue_size), dtype=int)
        self.ptrs = [0] * num_classes

    def enqueue(self, feats, labels):
        for label in set(labels.tolist()):
            feat = feats[labels == label][: self.q]
            feat_size, ptr, feat_ptr = len(feat), self.ptrs[label], 0
            if ptr + feat_size > self.q:
                feat_ptr = self.q - ptr
                self.feats[label, ptr:] = feat[:feat_ptr]
                self.labels[label, ptr:] = label
                feat_size -= feat_ptr
                ptr = 0
            self.feats[label, ptr : ptr + feat_size] = feat[feat_ptr:]
            self.labels[label, ptr : ptr + feat_size] = label
            self.ptrs[label] = ptr + feat_size

    def length(self, label):
        return int((self.labels[label] == label).sum())


def authors_sampling_classes(mean_score, randnum):
    """``_sampling_classes`` with its sorted ``np.random.rand`` given."""
    inverse = 1.0 / (mean_score + 10e-8)
    probability = inverse / inverse.sum()
    randnum = np.sort(randnum)
    point, index, selected = 0.0, 0, []
    for c, p in enumerate(probability):
        point += p
        if randnum[index] <= point:
            while randnum[index] <= point:
                selected.append(c)
                index += 1
                if index >= len(randnum):
                    return selected
    return selected


# --- The pieces against the ports -------------------------------------------------------------


def test_offset_signs_are_the_authors_matrix_and_every_corner_once():
    signs = offset_signs()
    np.testing.assert_array_equal(signs.numpy(), authors_offset_matrix())
    assert len({tuple(col) for col in signs.T.tolist()}) == 16


def test_jittered_boxes_equal_the_authors_generator():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 90, size=(7, 2))
    wh = rng.uniform(2, 60, size=(7, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[0] = [0.0, 1.0, 99.0, 79.0]  # touches the border: the clip matters
    u = rng.uniform(size=(4, 16))
    got = jittered_boxes(torch.tensor(boxes), torch.tensor(u), (80, 100))
    want = authors_bbox_generator(boxes, u, (80, 100))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert (want[0, :, 2] == 99.0).any() and (want[0, :, 1] < 1.0).any()


@pytest.mark.parametrize("seed", range(6))
def test_class_draw_equals_the_authors_walk(seed):
    rng = np.random.default_rng(seed)
    mean_score = rng.uniform(0.001, 0.9, size=40)
    mean_score[:3] = 0.01
    u = np.sort(rng.uniform(size=32))
    got = draw_classes(torch.tensor(mean_score), torch.tensor(u)).tolist()
    assert got == authors_sampling_classes(mean_score, u)
    assert len(got) == 32


def test_class_draw_frequencies_are_inverse_to_the_mean_scores():
    mean_score = torch.tensor([0.01, 0.02, 0.04, 0.5], dtype=torch.float64)
    u = torch.sort(torch.rand(200_000, generator=torch.Generator().manual_seed(3)))[0]
    counts = torch.bincount(draw_classes(mean_score, u), minlength=4).double()
    inverse = 1 / (mean_score + 1e-7)
    expected = inverse / inverse.sum() * len(u)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # chi-square, 3 df, p = 0.001


def test_first_per_class_keeps_the_first_rows_of_each_label_in_order():
    labels = torch.tensor([2, 0, 2, 2, 1, 0, 2])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert first_per_class(labels, 10).tolist() == list(range(7))


def test_queues_equal_the_authors_ring_over_many_steps():
    rng = np.random.default_rng(5)
    q = 6
    ours = FeatureMemory(C, queue_size=q)
    theirs = AuthorsQueue(C, q)
    ident = 0
    for _ in range(12):
        n = int(rng.integers(0, 15))
        labels = rng.integers(0, C, size=n)
        ids = np.arange(ident, ident + n, dtype=float)
        ident += n
        theirs.enqueue(ids, labels)
        feats = torch.tensor(ids)[:, None, None].expand(n, 2, 3).contiguous()
        ours.enqueue(feats, torch.tensor(labels), torch.tensor(ids)[:, None].expand(n, 4))
        for c in range(C):
            length = theirs.length(c)
            assert ours.filled(c) == length
            if length:
                np.testing.assert_array_equal(
                    ours.features[c][:length, 0, 0].numpy(), theirs.feats[c, :length]
                )
                np.testing.assert_array_equal(
                    ours.targets[c][:length, 0].numpy(), theirs.feats[c, :length]
                )


def _fake_pool(boxes):
    """A pooled 'feature' per box that identifies it: [K, 2, 1, 1] of its x1 + y2, x2 * y1."""
    b = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    return torch.stack([b[:, 0] + b[:, 3], b[:, 2] * b[:, 1]], 1)[:, :, None, None]


def _fake_encode(truths, boxes):
    if sum(len(b) for b in boxes) == 0:
        return torch.zeros(0, 4)
    return torch.cat(truths) - torch.cat(boxes)


def _images(seed, n):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(0, 4, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * 50
        boxes = torch.cat([xy, xy + 4 + torch.rand(k, 2, generator=g, dtype=torch.float64) * 30], 1)
        out.append((boxes, torch.randint(0, C, (k,), generator=g)))
    return out


def test_one_step_equals_the_authors_order_of_work():
    """Jitter (one uniform [4, 16] per image), enqueue, then the draw: the authors' MFS step with
    the same random numbers, from the step's generator in the same order."""
    images = _images(1, 3)
    shapes = [(90, 95), (100, 100), (85, 99)]
    mean_score = torch.tensor([0.01, 0.3, 0.05, 0.02, 0.6], dtype=torch.float64)
    memory = FeatureMemory(C, queue_size=5, classes_per_image=2, features_per_class=3, seed=9)
    got = memory(
        _fake_pool, _fake_encode, [b for b, _ in images], [k for _, k in images], shapes, mean_score
    )

    g = FeatureMemory(C, seed=9).generator()  # step 0's generator, drawn as the authors' step
    u = torch.rand(3, 4, 16, generator=g).double().numpy()
    theirs = AuthorsQueue(C, 5)
    store, rows, labels, targets = {}, [], [], []
    for i, (boxes, k) in enumerate(images):
        props = authors_bbox_generator(boxes.numpy(), u[i], shapes[i])
        for j in range(len(boxes)):
            for p in props[j]:
                rows.append(p)
                labels.append(int(k[j]))
                targets.append(boxes[j].numpy() - p)
    rows, labels, targets = np.array(rows).reshape(-1, 4), np.array(labels), np.array(targets)
    feats = np.stack([rows[:, 0] + rows[:, 3], rows[:, 2] * rows[:, 1]], 1)
    ids = np.arange(len(labels), dtype=float)
    theirs.enqueue(ids, labels)
    for i in range(len(ids)):
        store[i] = (feats[i], targets[i].reshape(-1))
    randnum = torch.sort(torch.rand(2 * 3, generator=g))[0].double().numpy()
    want_feats, want_labels, want_targets = [], [], []
    for c in authors_sampling_classes(mean_score.numpy(), randnum):
        length = theirs.length(c)
        if length == 0:
            continue
        picks = torch.randint(0, length, (3,), generator=g).numpy()
        for p in picks:
            f, t = store[int(theirs.feats[c, p])]
            want_feats.append(f)
            want_targets.append(t)
            want_labels.append(c)
    assert len(want_labels) > 0
    np.testing.assert_allclose(got[0][:, :, 0, 0].numpy(), np.array(want_feats), rtol=1e-6)
    assert got[1].tolist() == want_labels
    np.testing.assert_allclose(got[2].numpy(), np.array(want_targets), rtol=1e-6, atol=1e-4)
    assert memory.steps == 1


def test_state_travels_and_a_restored_memory_draws_the_same():
    images = _images(2, 2)
    shapes = [(90, 90)] * 2
    score = torch.full((C,), 0.01, dtype=torch.float64)
    args = (_fake_pool, _fake_encode, [b for b, _ in images], [k for _, k in images], shapes, score)
    a = FeatureMemory(C, queue_size=4, seed=3)
    a(*args)
    b = FeatureMemory(C, queue_size=4)
    b.load_state_dict(a.state_dict())
    assert (b.seed, b.steps, b.written) == (a.seed, a.steps, a.written)
    one, two = a(*args), b(*args)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x, y)
    assert len(one[1]) > 0


# --- The mean-score update with replayed rows --------------------------------------------------


def test_replayed_rows_count_once_per_class_as_the_authors_update():
    """``_compute_batch_mean_score``: each ground truth with positives is one entry, and each
    distinct class of the replayed rows one more, scored by their mean."""
    rng = np.random.default_rng(4)
    loss = build_loss("loce", C)
    loss.train()
    start = rng.uniform(0.01, 0.5, size=C)
    loss.mean_score.copy_(torch.tensor(start))
    # 2 ground truths (classes 1, 3), background rows, then replayed rows of classes 1, 1, 4
    labels = np.array([1, 1, 3, C, C, 1, 1, 4, 4])
    instances = [0, 0, 1, -1, -1] + [MEMORY_INSTANCE] * 4
    logits = rng.normal(0, 2, size=(len(labels), C + 1))
    loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(instances))
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    entries = {
        1: [p[[0, 1], 1].mean(), p[[5, 6], 1].mean()],
        3: [p[2, 3]],
        4: [p[[7, 8], 4].mean()],
    }
    want = start.copy()
    for c, means in entries.items():
        keep = 0.9 ** len(means)
        want[c] = keep * start[c] + (1 - keep) * np.mean(means)
    np.testing.assert_allclose(loss.mean_score.numpy(), want, rtol=1e-12)


# --- Across ranks -----------------------------------------------------------------------------


def _rank_memory(rank, world, init_file, images, shapes, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    memory = FeatureMemory(C, queue_size=6, classes_per_image=3, features_per_class=2, seed=4)
    mine = slice(rank * 2, (rank + 1) * 2)
    score = torch.tensor([0.01, 0.3, 0.05, 0.02, 0.6], dtype=torch.float64)
    drawn = []
    for step in range(3):
        part = images[step][mine]
        drawn.append(
            memory(
                _fake_pool,
                _fake_encode,
                [b for b, _ in part],
                [k for _, k in part],
                shapes[mine],
                score,
            )
        )
    torch.save({"state": memory.state_dict(), "drawn": drawn}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_keep_and_draw_as_one_process(tmp_path):
    import torch.multiprocessing as mp

    images = [_images(10 + s, 4) for s in range(3)]
    shapes = [(90, 90), (80, 99), (99, 80), (70, 70)]
    out = tmp_path / "memory"
    mp.spawn(_rank_memory, args=(2, tmp_path / "init", images, shapes, out), nprocs=2, join=True)
    together = FeatureMemory(C, queue_size=6, classes_per_image=3, features_per_class=2, seed=4)
    score = torch.tensor([0.01, 0.3, 0.05, 0.02, 0.6], dtype=torch.float64)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    for step in range(3):
        want = together(
            _fake_pool,
            _fake_encode,
            [b for b, _ in images[step]],
            [k for _, k in images[step]],
            shapes,
            score,
        )
        for i in range(3):
            got = torch.cat([ranks[0]["drawn"][step][i], ranks[1]["drawn"][step][i]])
            assert torch.equal(got, want[i])
        assert len(want[1]) > 0
    for rank in ranks:
        state = rank["state"]["_extra_state"]
        assert state["written"] == together.written and state["steps"] == 3
        for c in together.features:
            assert torch.equal(state["features"][c], together.features[c])
            assert torch.equal(state["targets"][c], together.targets[c])


# --- In the model -----------------------------------------------------------------------------


def test_heads_replay_the_memory_with_the_sampled_rois():
    from gumbel_analysis.model import build_model

    torch.manual_seed(0)
    loss = build_loss("loce", C, loce_mfs=True, loce_mfs_classes=2, loce_mfs_features=3)
    model = build_model("tiny", C, loss, seed=1).train()
    memory = model.roi_heads.feature_memory
    assert memory is not None and memory.queue_size == 80 and memory.seed == 1
    seen, replayed_out = [], []
    model.roi_heads.register_class_logits_hook(lambda z, y: seen.append(y))
    memory.register_forward_hook(lambda module, args, out: replayed_out.append(out))
    images = [torch.rand(3, 96, 96) for _ in range(2)]
    targets = []
    for k in range(2):
        boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0], [30.0, 20.0, 90.0, 70.0]])
        masks = torch.zeros(2, 96, 96, dtype=torch.uint8)
        masks[:, 20:50, 20:50] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1 + k, 4]), "masks": masks})
    losses = model(images, targets)
    features, drawn, _ = replayed_out[0]
    labels = seen[0]
    assert (
        len(drawn) > 0
        and len(drawn) % 3 == 0
        and features.shape[1:] == (model.roi_heads.box_head.fc6.in_features // 49, 7, 7)
    )
    assert torch.equal(labels[-len(drawn) :], drawn)  # appended after the sampled RoIs
    assert set(drawn.tolist()) <= {0, 1, 3}  # loss labels of the ground truths' classes
    assert memory.written == {0: 16, 1: 16, 3: 32}
    assert all(torch.isfinite(v) for v in losses.values())
    assert not model.roi_heads.feature_memory.features[3].requires_grad


def test_without_mfs_the_heads_keep_no_memory():
    from gumbel_analysis.model import build_model

    assert build_model("tiny", C, build_loss("loce", C)).roi_heads.feature_memory is None
    with pytest.raises(ValueError, match="queue_size"):
        FeatureMemory(C, queue_size=0)

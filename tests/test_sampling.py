"""Repeat factor sampling (LVIS paper, detectron2) and the plain shuffling sampler."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from gumbel_analysis.data.sampling import (
    RepeatFactorSampler,
    build_train_sampler,
    class_repeat_factors,
    repeat_factors,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.config import DataStats, TrainConfig, resolve


def test_repeat_factors_by_hand():
    # f_c of four classes (labels 1..4), t = 1e-3:
    #   r(1) = max(1, sqrt(0.001 / 0.5))    = 1
    #   r(2) = max(1, sqrt(0.001 / 0.0005)) = sqrt(2)
    #   r(3) = max(1, sqrt(0.001 / 0.0001)) = sqrt(10)
    #   r(4) = max(1, sqrt(0.001 / 0.002))  = 1
    frequency = [0.5, 0.0005, 0.0001, 0.002]
    assert class_repeat_factors(frequency) == pytest.approx([1, math.sqrt(2), math.sqrt(10), 1])
    labels = [{1}, {1, 2}, {3, 4}, set(), {4}, {2, 3}]
    expected = [1.0, math.sqrt(2), math.sqrt(10), 1.0, 1.0, math.sqrt(10)]
    assert repeat_factors(labels, np.array(frequency)) == pytest.approx(expected)
    # a larger threshold: r(1) = sqrt(0.08 / 0.5) = 0.4 -> 1; r(4) = sqrt(0.08 / 0.002) = sqrt(40)
    assert repeat_factors([{1}, {4}], frequency, threshold=0.08) == pytest.approx(
        [1.0, math.sqrt(40)]
    )


def test_repeat_factors_refuse_bad_input():
    with pytest.raises(InputError, match=r"label 3 outside 1\.\.2"):
        repeat_factors([{3}], [0.1, 0.2])
    with pytest.raises(InputError, match=r"label 0 outside 1\.\.2"):
        repeat_factors([{0}], [0.1, 0.2])
    with pytest.raises(InputError, match="threshold"):
        repeat_factors([{1}], [0.1], threshold=0.0)
    with pytest.raises(InputError, match="fractions"):
        repeat_factors([{1}], [1.5])
    with pytest.raises(InputError, match="frequency is 0"):
        repeat_factors([{1}], [0.0])


def epoch_list(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    items = list(sampler)
    assert len(items) == len(sampler)
    return items


def test_stochastic_rounding_has_the_factor_as_mean():
    factors = np.array([1.0, 1.3, 2.5, 3.9, 0.2, 1.0])
    sampler = RepeatFactorSampler(factors, seed=7, num_replicas=1, rank=0)
    epochs = 3000
    counts = np.array([np.bincount(epoch_list(sampler, e), minlength=6) for e in range(epochs)])
    assert np.all(counts >= np.floor(factors)) and np.all(counts <= np.ceil(factors))
    frac = factors - np.floor(factors)
    tolerance = 5 * np.sqrt(frac * (1 - frac) / epochs) + 1e-12  # five standard errors
    assert np.all(np.abs(counts.mean(0) - factors) <= tolerance)
    assert counts[:, 0].tolist() == [1] * epochs  # whole factors never vary


def test_lists_are_determined_by_seed_and_epoch():
    factors = np.linspace(1.0, 4.0, 50)
    a = RepeatFactorSampler(factors, seed=1, num_replicas=1, rank=0)
    b = RepeatFactorSampler(factors, seed=1, num_replicas=1, rank=0)
    assert epoch_list(a, 3) == epoch_list(b, 3)
    assert epoch_list(a, 3) != epoch_list(a, 4)
    c = RepeatFactorSampler(factors, seed=2, num_replicas=1, rank=0)
    assert epoch_list(c, 3) != epoch_list(a, 3)
    assert epoch_list(a, 3) == epoch_list(b, 3)  # going back to an epoch redraws the same list


def test_without_shuffle_indices_come_in_order():
    sampler = RepeatFactorSampler([2.0, 1.0, 3.0], shuffle=False, num_replicas=1, rank=0)
    assert list(sampler) == [0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_split_the_single_process_list(replicas):
    factors = np.array([1.0, 1.5, 2.2, 1.0, 3.7, 1.1, 1.0])
    for epoch in range(6):
        single = epoch_list(RepeatFactorSampler(factors, seed=4, num_replicas=1, rank=0), epoch)
        parts = [
            epoch_list(RepeatFactorSampler(factors, seed=4, num_replicas=replicas, rank=r), epoch)
            for r in range(replicas)
        ]
        assert len({len(p) for p in parts}) == 1  # every rank takes as many steps
        padding = -len(single) % replicas
        padded = single + single[:padding]
        assert Counter(i for p in parts for i in p) == Counter(padded)
        for r, part in enumerate(parts):
            assert part == padded[r::replicas]


def test_random_sampler_is_a_seeded_shuffle_per_epoch():
    data = list(range(23))
    sampler = build_train_sampler(data, "random", seed=3, num_replicas=1, rank=0)
    first = epoch_list(sampler, 0)
    assert sorted(first) == data
    assert epoch_list(sampler, 1) != first
    again = build_train_sampler(data, "random", seed=3, num_replicas=1, rank=0)
    assert epoch_list(again, 0) == first
    ranks = [build_train_sampler(data, "random", seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)
    assert set(epoch_list(ranks[0], 2)) | set(epoch_list(ranks[1], 2)) == set(data)


class Labelled:
    """The two things build_train_sampler needs of a dataset."""

    class_frequency = np.array([0.5, 0.0004])

    def __len__(self) -> int:
        return 3

    def image_categories(self) -> list[set[int]]:
        return [{1}, {2}, set()]


def test_rfs_sampler_uses_the_dataset_frequencies():
    sampler = build_train_sampler(Labelled(), "rfs", seed=0, threshold=1e-3, num_replicas=1)
    assert isinstance(sampler, RepeatFactorSampler)
    # r = [1, sqrt(0.001 / 0.0004) = 1.58.., 1]: image 1 comes once or twice, the others once
    counts = Counter(epoch_list(sampler, 0))
    assert counts[0] == 1 and counts[2] == 1 and counts[1] in (1, 2)
    total = sum(Counter(epoch_list(sampler, e))[1] for e in range(2000))
    assert total / 2000 == pytest.approx(math.sqrt(2.5), abs=0.05)


def test_bad_sampler_arguments_are_refused():
    with pytest.raises(InputError, match="unknown sampler 'uniform'"):
        build_train_sampler(Labelled(), "uniform", seed=0)
    with pytest.raises(InputError, match="rank 2"):
        RepeatFactorSampler([1.0], num_replicas=2, rank=2)
    with pytest.raises(InputError, match="finite"):
        RepeatFactorSampler([1.0, float("nan")])


def test_the_rfs_threshold_is_derived_from_the_data_as_lvis_0001():
    """t = None: the border of the common and frequent groups. On LVIS v1 (the largest common
    class in 100 of 100,170 images, the smallest frequent one in 101) that is 100.5 / 100170,
    detectron2's 0.001; on 600 images a fixed 0.001 would repeat nothing."""
    from gumbel_analysis.paper import LVIS_V1_TRAIN_IMAGES

    lvis = DataStats(
        class_frequency=np.array([1, 10, 11, 100, 101, 5000]) / LVIS_V1_TRAIN_IMAGES,
        frequency_groups=["r", "r", "c", "c", "f", "f"],
    )
    t = rfs_threshold_of(lvis)
    assert t == pytest.approx(100.5 / LVIS_V1_TRAIN_IMAGES, rel=1e-12)
    assert t == pytest.approx(1e-3, rel=0.01)

    from gumbel_analysis.data.synthetic import frequency_thresholds
    from gumbel_analysis.experiments.material import BENCHMARK

    m = BENCHMARK.train_images
    rare_max, common_max = frequency_thresholds(m)
    counts = np.array([1, rare_max, common_max, common_max + 1, m // 2])
    small = DataStats(class_frequency=counts / m, frequency_groups=["r", "r", "c", "f", "f"])
    t = rfs_threshold_of(small)
    assert t == pytest.approx((common_max + 0.5) / m, rel=1e-12)
    fixed = class_repeat_factors(counts / m, 1e-3)
    derived = class_repeat_factors(counts / m, t)
    assert np.all(fixed == 1.0)  # the old default: no class repeated at all
    # a one-image class repeats sqrt(t * m) times, as on LVIS about sqrt(0.001 * 100170) = 10
    assert derived[0] == pytest.approx(math.sqrt(t * m), rel=1e-12) and derived[0] > 5
    assert np.all(derived[3:] == 1.0)


def test_rfs_threshold_cannot_be_derived_without_frequent_classes():
    data = DataStats(class_frequency=np.array([0.1, 0.2]), frequency_groups=["r", "c"])
    with pytest.raises(InputError, match="--sampler rfs: cannot derive the RFS threshold"):
        rfs_threshold_of(data)


def rfs_threshold_of(data: DataStats) -> float:
    """The RFS threshold a run with ``rfs_threshold`` None resolves to on ``data``."""
    return resolve(TrainConfig(sampler="rfs"), data=data).rfs_threshold

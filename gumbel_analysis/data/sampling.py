"""Training samplers: plain shuffling and repeat factor sampling (RFS).

RFS is the LVIS paper's (Gupta et al., 2019, Sec. 5) over-sampling of images with rare classes,
as in detectron2's ``RepeatFactorTrainingSampler``: a class seen in a fraction ``f_c`` of the
training images has ``r(c) = max(1, sqrt(t / f_c))``, an image repeats ``r(I) = max_{c in I} r(c)``
times per epoch, and the fractional part is rounded stochastically, afresh each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from gumbel_analysis.errors import InputError

SAMPLERS = ("random", "rfs")
DEFAULT_RFS_THRESHOLD = 1e-3


def class_repeat_factors(
    class_frequency: np.ndarray | Sequence[float], threshold: float = DEFAULT_RFS_THRESHOLD
) -> np.ndarray:
    """``r(c) = max(1, sqrt(t / f_c))`` per class; infinite for a class in no image."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"RFS threshold must be a positive number, got {threshold}")
    f = np.asarray(class_frequency, dtype=np.float64)
    if f.ndim != 1 or not np.all(np.isfinite(f)) or np.any(f < 0) or np.any(f > 1):
        raise InputError("class frequencies must be a list of fractions in [0, 1]")
    with np.errstate(divide="ignore"):
        return np.maximum(1.0, np.sqrt(threshold / f))


def repeat_factors(
    image_labels: Sequence[set[int]],
    class_frequency: np.ndarray | Sequence[float],
    threshold: float = DEFAULT_RFS_THRESHOLD,
) -> np.ndarray:
    """Per image ``r(I) = max over its labels of r(c)``; 1 for an image without labels.

    Labels are 1..C (0 is the background) and ``class_frequency[label - 1]`` is ``f_c``.
    """
    per_class = class_repeat_factors(class_frequency, threshold)
    factors = np.ones(len(image_labels), dtype=np.float64)
    for i, labels in enumerate(image_labels):
        if not labels:
            continue
        index = np.fromiter(labels, dtype=np.int64) - 1
        if index.min() < 0 or index.max() >= len(per_class):
            bad = sorted(labels)[0] if index.min() < 0 else sorted(labels)[-1]
            raise InputError(f"image {i} has label {bad} outside 1..{len(per_class)}")
        factors[i] = per_class[index].max()
        if not math.isfinite(factors[i]):
            raise InputError(f"image {i} shows a class whose frequency is 0")
    return factors


def world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(replicas, rank): the given ones, else torch.distributed's, else a single process."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise InputError(f"rank {rank} is not in 0..{num_replicas - 1}")
    return num_replicas, rank


class RepeatFactorSampler(Sampler[int]):
    """Dataset indices, image ``i`` repeated ``floor(r_i)`` or ``ceil(r_i)`` times per epoch.

    An image repeats ``floor(r_i) + 1`` times with probability ``r_i - floor(r_i)``, so its mean
    count is ``r_i``. Each epoch's list depends only on ``(seed, epoch)``: every rank draws the same
    list (shuffled), pads it to a multiple of ``num_replicas`` by repeating its start, and takes
    ``rank::num_replicas`` (as ``DistributedSampler`` does). Call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        repeat_factors: np.ndarray,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        factors = np.asarray(repeat_factors, dtype=np.float64)
        if factors.ndim != 1 or not np.all(np.isfinite(factors)) or np.any(factors < 0):
            raise InputError("repeat factors must be a list of finite non-negative numbers")
        self._whole = np.floor(factors).astype(np.int64)
        self._fraction = factors - self._whole
        self.shuffle, self.seed = shuffle, int(seed)
        self.num_replicas, self.rank = world(num_replicas, rank)
        self.epoch = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """This epoch's list for all ranks together (padded); rank ``r`` gets ``[r::replicas]``."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        counts = self._whole + (rng.random(len(self._whole)) < self._fraction)
        indices = np.repeat(np.arange(len(counts)), counts)
        if self.shuffle:
            indices = rng.permutation(indices)
        padding = -len(indices) % self.num_replicas
        if padding and len(indices):
            indices = np.concatenate([indices, np.resize(indices, padding)])
        self._cached = (self.epoch, indices)
        return indices

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(self.epoch_indices()) // self.num_replicas


def build_train_sampler(
    dataset,
    kind: str,
    seed: int,
    threshold: float = DEFAULT_RFS_THRESHOLD,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> Sampler[int]:
    """The training sampler: ``random`` (a shuffle per epoch) or ``rfs``; both have set_epoch.

    ``random`` is torch's ``DistributedSampler(shuffle=True, seed)``, which with one replica is a
    seeded shuffle of the whole dataset. ``rfs`` needs ``dataset.image_categories()`` and
    ``dataset.class_frequency`` (see :class:`~gumbel_analysis.data.dataset.LVISDetection`).
    """
    replicas, this_rank = world(num_replicas, rank)
    if kind == "random":
        return DistributedSampler(
            dataset, num_replicas=replicas, rank=this_rank, shuffle=True, seed=seed
        )
    if kind == "rfs":
        factors = repeat_factors(dataset.image_categories(), dataset.class_frequency, threshold)
        return RepeatFactorSampler(factors, seed=seed, num_replicas=replicas, rank=this_rank)
    raise InputError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}")

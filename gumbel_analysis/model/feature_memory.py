"""LOCE's memory-augmented feature sampling (MFS; Feng et al., ICCV 2021): RoI features of
ground-truth boxes kept in a queue per class, and replayed to the box head, classes drawn with
probability inverse to their mean classification score (LOCE's equilibrium loss keeps it).

Each training step, as the authors' ``MFS`` and ``LoceRoIHead._bbox_forward_train``:

1. **Boxes.** Every ground-truth box ``(x1, y1, x2, y2)`` of width ``w`` and height ``h`` gives 16
   jittered boxes: coordinate ``k`` of box ``j`` moves by ``S[k, j] u[k, j] (w, h, w, h)[k] / 6``,
   where ``S`` is the fixed sign pattern of the authors' offset matrix (its 16 columns are the
   16 corners of a 4-cube: every combination of signs) and ``u`` one uniform [4, 16] draw per
   image, shared by its boxes. Coordinates are clipped to the image (``[0, W - 1]``,
   ``[0, H - 1]``).
2. **Memory.** Their RoI features (the box head's pooler, detached) join their class's queue of
   ``queue_size`` (80) entries, first in, first out, with the regression targets from each
   jittered box to its ground truth. At most ``queue_size`` entries of a class join per step
   (the first, in image order).
3. **Draw.** ``classes_per_image x images`` classes are drawn with replacement, class ``c`` with
   probability ``(1 / (m_c + 1e-7)) / sum_j (1 / (m_j + 1e-7))`` (``m``: the mean scores), by the
   authors' inverse-CDF walk on sorted uniforms (so in class order). Each drawn class with a
   non-empty queue gives ``features_per_class`` (4) entries drawn uniformly with replacement.
4. The drawn features are appended to the sampled RoIs' features, labelled with their class and
   regression targets (weight 1), and trained with them; the equilibrium loss counts each
   distinct drawn class as one more instance of its class, scored by its drawn rows' mean.

**Across processes.** The authors keep one queue per GPU and draw 8 classes per GPU of 2 images.
Here the queue holds the entries of every rank's images (gathered, in rank order) and the draw
is made once for the whole batch, from a generator seeded by the run's seed and the step, and
split between the ranks in contiguous shares: ``N`` processes train exactly as one process with
all their images. The default of 4 classes per image is the authors' 8 per GPU of 2 images; with
one process of 2 images the draw is theirs.

**Memory.** An entry is the pooled feature (FPN: 256 x 7 x 7 float32, 50 KB), so a class's full
queue is 4 MB (80 entries): LVIS v1's 1203 classes take up to 4.8 GB, kept on the CPU as the
authors' default (``gpu_statictics=False``). Queues are made on a class's first ground truth and
saved in the checkpoint (exact resume); ``model_final.pt`` carries them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

#: The authors' added constant of ``1 / (m + eps)`` (``10e-8``).
SCORE_EPS = 1e-7
#: Jittered boxes per ground truth, and the jitter's fraction of the width and height.
BOXES_PER_TRUTH = 16
JITTER = 1.0 / 6.0

#: ``pool(boxes per image) -> [K, ...]`` pooled RoI features of the boxes, all images in order.
Pooler = Callable[[list[torch.Tensor]], torch.Tensor]
#: ``encode(ground truths, boxes) -> [K, 4]`` regression targets, per image lists.
Encoder = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]


def offset_signs() -> torch.Tensor:
    """The authors' [4, 16] sign matrix: row ``k`` alternates blocks of ``8 / 2^k`` -1s and +1s,
    so the 16 columns are every combination of the four signs."""
    rows = []
    for block in (8, 4, 2, 1):
        row = ([-1.0] * block + [1.0] * block) * (16 // (2 * block))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def jittered_boxes(
    boxes: torch.Tensor, uniform: torch.Tensor, image_shape: tuple[int, int]
) -> torch.Tensor:
    """[G, 16, 4] jittered copies of the [G, 4] ground-truth boxes (step 1 of the module
    docstring), ``uniform`` the image's [4, 16] draw, ``image_shape`` (height, width)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    scale = torch.stack([w, h, w, h], -1).unsqueeze(-1)  # [G, 4, 1]
    offsets = JITTER * offset_signs().to(boxes) * uniform.to(boxes) * scale
    jittered = (boxes.unsqueeze(-1) + offsets).permute(0, 2, 1)  # [G, 16, 4]
    height, width = image_shape
    high = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
    return torch.minimum(jittered.clamp(min=0), high)


def draw_classes(mean_score: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The classes the sorted uniforms ``uniform`` pick, class ``c`` with probability inverse to
    ``mean_score[c]`` (step 3): the authors' walk, ``u <= F(c)`` for the first such ``c``; a
    uniform beyond the last cumulative sum (rounding) picks nothing, as theirs."""
    inverse = 1.0 / (mean_score.double() + SCORE_EPS)
    cumulative = torch.cumsum(inverse / inverse.sum(), 0)
    picked = torch.searchsorted(cumulative, uniform.double(), side="left")
    return picked[picked < len(mean_score)]


def _world() -> tuple[int, int]:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def _gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's rows of ``t`` (sizes may differ), concatenated in rank order."""
    if world == 1:
        return t
    size = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch_dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: len(t)] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch_dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


def first_per_class(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of the first ``limit`` rows of each label, in their order."""
    if len(labels) == 0:
        return labels.new_zeros(0)
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = torch.arange(len(labels), device=labels.device) - starts
    keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    keep[order] = rank_in_class < limit
    return torch.where(keep)[0]


class FeatureMemory(nn.Module):
    """LOCE's MFS: per-class queues of ground-truth RoI features and the draw of replayed
    features (see the module docstring). No parameters; its state (queues, step) travels in the
    state dict as extra state, so DDP does not broadcast it at every step."""

    def __init__(
        self,
        num_classes: int,
        *,
        queue_size: int = 80,
        classes_per_image: int = 4,
        features_per_class: int = 4,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("queue_size", queue_size),
            ("classes_per_image", classes_per_image),
            ("features_per_class", features_per_class),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        self.num_classes = int(num_classes)
        self.queue_size = int(queue_size)
        self.classes_per_image = int(classes_per_image)
        self.features_per_class = int(features_per_class)
        self.seed = int(seed)
        self.steps = 0
        #: class -> [queue_size, ...] features, [queue_size, 4] targets, entries ever written.
        self.features: dict[int, torch.Tensor] = {}
        self.targets: dict[int, torch.Tensor] = {}
        self.written: dict[int, int] = {}

    # --- state ------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "features": dict(self.features),
            "targets": dict(self.targets),
            "written": dict(self.written),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed, self.steps = int(state["seed"]), int(state["steps"])
        self.features = {int(c): t.cpu() for c, t in state["features"].items()}
        self.targets = {int(c): t.cpu() for c, t in state["targets"].items()}
        self.written = {int(c): int(n) for c, n in state["written"].items()}

    def filled(self, c: int) -> int:
        """How many entries class ``c``'s queue holds."""
        return min(self.written.get(c, 0), self.queue_size)

    # --- one step ---------------------------------------------------------------------------

    def generator(self) -> torch.Generator:
        """This step's generator, the same on every rank (the run's seed and the step)."""
        words = np.random.SeedSequence([self.seed, self.steps, 0x4D4653]).generate_state(2)
        return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))

    def enqueue(self, features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        """Push the rows (in order) into their classes' queues, at most ``queue_size`` a class."""
        keep = first_per_class(labels, self.queue_size)
        features, labels, targets = features[keep].cpu(), labels[keep].cpu(), targets[keep].cpu()
        for c in torch.unique(labels).tolist():
            rows = labels == c
            if c not in self.features:
                self.features[c] = features.new_zeros((self.queue_size, *features.shape[1:]))
                self.targets[c] = targets.new_zeros((self.queue_size, 4))
                self.written[c] = 0
            start = self.written[c] % self.queue_size
            slots = (start + torch.arange(int(rows.sum()))) % self.queue_size
            self.features[c][slots] = features[rows]
            self.targets[c][slots] = targets[rows]
            self.written[c] += int(rows.sum())

    def draw(
        self, mean_score: torch.Tensor, images: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, labels, targets) of this step's replayed entries, for the whole batch."""
        uniform = torch.sort(torch.rand(self.classes_per_image * images, generator=generator))[0]
        features, labels, targets = [], [], []
        for c in draw_classes(mean_score.cpu(), uniform).tolist():
            length = self.filled(c)
            if length == 0:
                continue
            rows = torch.randint(0, length, (self.features_per_class,), generator=generator)
            features.append(self.features[c][rows])
            targets.append(self.targets[c][rows])
            labels.append(torch.full((self.features_per_class,), c, dtype=torch.long))
        if not labels:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)
        return torch.cat(features), torch.cat(labels), torch.cat(targets)

    @torch.no_grad()
    def forward(
        self,
        pool: Pooler,
        encode: Encoder,
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        mean_score: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step on this rank's images: their ground truths' features enter the memory, then
        this rank's share of the draw comes back as (features [K, ...], labels [K] in 0..C-1,
        regression targets [K, 4]) on the features' device. ``boxes``/``labels``: the
        ground truths of each image (labels 0..C-1)."""
        rank, world = _world()
        generator = self.generator()
        device = boxes[0].device if boxes else torch.device("cpu")
        images = torch.tensor([len(boxes)], device=device)
        counts = _gather_rows(images, world)
        offset, total = int(counts[:rank].sum()), int(counts.sum())
        uniform = torch.rand(total, 4, BOXES_PER_TRUTH, generator=generator)
        uniform = uniform[offset : offset + len(boxes)]

        jittered = [
            jittered_boxes(b, u, s).reshape(-1, 4)
            for b, u, s in zip(boxes, uniform, image_shapes, strict=True)
        ]
        truths = [b.repeat_interleave(BOXES_PER_TRUTH, dim=0) for b in boxes]
        pooled = pool(jittered).float()
        targets = encode(truths, jittered).float()
        classes = torch.cat(labels).long().repeat_interleave(BOXES_PER_TRUTH)
        # Only the first queue_size of a class can enter: the rest need not travel.
        keep = first_per_class(classes, self.queue_size)
        pooled, classes, targets = pooled[keep], classes[keep], targets[keep]
        self.enqueue(
            _gather_rows(pooled, world), _gather_rows(classes, world), _gather_rows(targets, world)
        )
        features, drawn, drawn_targets = self.draw(mean_score, total, generator)
        self.steps += 1
        share = torch.tensor_split(torch.arange(len(drawn)), world)[rank]
        if len(drawn) == 0:
            features = pooled.new_zeros((0, *pooled.shape[1:]))
        return (
            features[share].to(pooled.device),
            drawn[share].to(pooled.device),
            drawn_targets[share].to(pooled.device),
        )

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, classes_per_image={self.classes_per_image}, "
            f"features_per_class={self.features_per_class}"
        )

"""A synthetic long-tailed instance-segmentation dataset in the LVIS v1 format.

It is the project's embedded default: ``gumbel train`` without ``--data`` builds it once (cached,
keyed by its parameters) and trains on it; ``gumbel make-data`` writes it anywhere.

Appearance. Each class is one combination of a shape (circle, square, triangle, star, cross,
diamond, crescent, ellipse), a hue (red, orange, yellow, green, cyan, blue, purple, magenta) and a
texture (solid, striped, checked). Class ``k`` (category id ``k + 1``) takes shape ``k mod 8``,
hue ``(k mod 8 + k div 8) mod 8`` and texture ``(k div 8) mod 3``, so any two of the first 64
classes differ in shape or hue, and all 192 combinations are distinct. Objects are strongly
saturated, 9-38% of the image side, rotated by at most 15 degrees, with a little hue, tone and
aspect jitter, on a greyish gradient with noise and faint lines. 1-4 objects per image; their
boxes may overlap but their masks never do (2 px apart), so the polygon of each object is exactly
its visible mask.

Long tail. Classes get a seeded random frequency rank (ids are not sorted by frequency). The
number of training images of the class of rank ``r = 0..C-1`` falls geometrically from ``n_max``
to one: ``n_r = round(n_max ** (1 - r / (C - 1)))``. The log counts are thus spread evenly, as on
LVIS's log-count against rank plot, and the groups get about LVIS's shares (about 30/40/30% of
classes rare/common/frequent). A pure power law ``n_max / (r + 1) ** a`` ending at one image would
put most classes in the rare group. ``n_max`` is 45% of the training images, lowered when the
images cannot hold the instances (at most 2.5 classes per image on average) and raised when the
classes cannot fill every image.

Frequency groups. LVIS calls a class rare in 1-10 training images, common in 11-100 and frequent
in more, out of about 100k images. Here the thresholds are those of LVIS applied to a dataset
scaled to 1000 training images: with ``M`` training images a class is

* rare (``r``) in at most ``max(1, M // 100)`` images,
* common (``c``) in at most ``max(rare + 1, M // 10)`` images,
* frequent (``f``) in more.

At the default 600 images: rare <= 6, common 7-60, frequent > 60. The thresholds are written in
the JSON's ``info.frequency_thresholds``; each category's ``frequency`` field holds its group.
``image_count`` and ``instance_count`` are counted on the training split in both files, as LVIS
does. Validation images show every class at least ``val_min_images`` times (default
``VAL_MIN_IMAGES``, so APr is defined),
otherwise in the training proportions. Each image lists ``NEG_PER_IMAGE`` categories absent from
it as ``neg_category_ids`` (true: every object of every class is annotated), so LVISEval counts
false positives on them; ``not_exhaustive_category_ids`` is empty.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gumbel_analysis.errors import InputError
from gumbel_analysis.groups import FREQUENCY_GROUPS
from gumbel_analysis.io import make_temp_dir

#: Bumped whenever the generator's output changes, so cached datasets are rebuilt.
GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "crescent", "ellipse")
#: Hue in degrees of each colour name.
HUES = {
    "red": 0.0,
    "orange": 28.0,
    "yellow": 55.0,
    "green": 120.0,
    "cyan": 185.0,
    "blue": 225.0,
    "purple": 275.0,
    "magenta": 315.0,
}
TEXTURES = ("solid", "striped", "checked")
MAX_CLASSES = len(TEXTURES) * len(SHAPES) * len(HUES)

HEAD_FRACTION = 0.45  # share of training images that show the most frequent class
MAX_MEAN_CLASSES = 2.5  # classes per image on average, at most
MAX_OBJECTS = 4  # objects per image, at most
VAL_MIN_IMAGES = 3  # validation images per class, at least
NEG_PER_IMAGE = 3
OBJECT_SIZE = (0.094, 0.375)  # object extent as a fraction of the image side (12-48 px at 128)
MASK_GAP = 2  # pixels between two objects' masks
ANNOTATION_FILES = {"train": "lvis_v1_train.json", "val": "lvis_v1_val.json"}
_EXTRA_OBJECTS_P = (0.55, 0.25, 0.12, 0.08)  # P(0, 1, 2, 3 extra objects of present classes)


@dataclass(frozen=True)
class SyntheticSpec:
    """The parameters of a synthetic dataset; the defaults are ``gumbel train``'s embedded data."""

    classes: int = 20
    train_images: int = 600
    val_images: int = 150
    size: int = 128
    seed: int = 0
    val_min_images: int = VAL_MIN_IMAGES
    #: 0: the validation split. k >= 1: the k-th held-out split instead, the same training
    #: split with validation images drawn apart from the val split's (for choosing a setting,
    #: such as NorCal's gamma, away from the split results are reported on).
    heldout: int = 0

    def recorded(self) -> dict[str, int]:
        """The parameters as the files and the cache name record them: ``heldout`` only where
        set, so that data made before held-out splits existed keeps its name and bytes."""
        fields = asdict(self)
        if not self.heldout:
            del fields["heldout"]
        return fields

    def key(self) -> str:
        """A short stable name of the parameters (and the generator version) for the cache."""
        text = json.dumps({"version": GENERATOR_VERSION, **self.recorded()}, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        heldout = f"-h{self.heldout}" if self.heldout else ""
        return (
            f"synthetic-c{self.classes}-n{self.train_images}-v{self.val_images}"
            f"-s{self.size}-seed{self.seed}{heldout}-{digest}"
        )

    def check(self) -> None:
        """Raise InputError for parameters that cannot make a dataset with all three groups."""
        if not 3 <= self.classes <= MAX_CLASSES:
            raise InputError(f"--classes must be in 3..{MAX_CLASSES}, got {self.classes}")
        if self.train_images < 20:
            raise InputError(f"--train-images must be at least 20, got {self.train_images}")
        if self.val_images < 1:
            raise InputError(f"--val-images must be at least 1, got {self.val_images}")
        if not 32 <= self.size <= 1024:
            raise InputError(f"--size must be in 32..1024 pixels, got {self.size}")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative, got {self.seed}")
        if self.val_min_images < 1:
            raise InputError(f"--val-min-images must be at least 1, got {self.val_min_images}")
        if self.heldout < 0:
            raise InputError(f"--heldout must be non-negative, got {self.heldout}")


def frequency_thresholds(train_images: int) -> tuple[int, int]:
    """(most images of a rare class, most images of a common class): LVIS's 10 and 100 per 1000."""
    rare = max(1, train_images // 100)
    return rare, max(rare + 1, train_images // 10)


def frequency_group(image_count: int, thresholds: tuple[int, int]) -> str:
    rare, common = thresholds
    return "r" if image_count <= rare else "c" if image_count <= common else "f"


def class_appearance(index: int) -> tuple[str, str, str]:
    """(shape, colour, texture) of class ``index`` (0-based; category id ``index + 1``)."""
    block = index // len(SHAPES)
    shape = index % len(SHAPES)
    colour = list(HUES)[(shape + block) % len(HUES)]
    return SHAPES[shape], colour, TEXTURES[block % len(TEXTURES)]


def class_name(index: int) -> str:
    shape, colour, texture = class_appearance(index)
    return f"{colour}_{shape}" if texture == "solid" else f"{colour}_{texture}_{shape}"


def train_image_counts(classes: int, train_images: int) -> np.ndarray:
    """Training images per class, by frequency rank (most frequent first); see the docstring."""

    def counts(n_max: int) -> np.ndarray:
        exponent = 1.0 - np.arange(classes) / (classes - 1)
        return np.maximum(1, np.rint(float(n_max) ** exponent)).astype(np.int64)

    m = train_images
    n_max = max(2, round(HEAD_FRACTION * m))
    budget = int(MAX_MEAN_CLASSES * m)
    if counts(n_max).sum() > budget:  # too many instances: largest n_max within the budget
        lo, hi = 2, n_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if counts(mid).sum() <= budget else (lo, mid - 1)
        n_max = lo
    elif counts(n_max).sum() < m:  # some image would be empty: smallest n_max that fills all
        lo, hi = n_max, m
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if counts(mid).sum() >= m else (mid + 1, hi)
        n_max = lo
    result = counts(n_max)
    if result.sum() > budget:
        raise InputError(
            f"{classes} classes do not fit in {m} training images "
            f"(at most {MAX_MEAN_CLASSES:g} classes per image); use fewer classes or more images"
        )
    thresholds = frequency_thresholds(m)
    missing = set(FREQUENCY_GROUPS) - {frequency_group(int(n), thresholds) for n in result}
    if missing:
        raise InputError(
            f"{classes} classes in {m} training images leave the frequency group(s) "
            f"{', '.join(sorted(missing))} empty; use "
            + ("fewer classes or more images" if "f" in missing else "more classes")
        )
    return result


def val_image_counts(
    train_counts: np.ndarray, train_images: int, val_images: int, minimum: int = VAL_MIN_IMAGES
) -> np.ndarray:
    """Validation images per class (same order): training proportions, at least ``minimum``."""
    floor = min(minimum, val_images)
    counts = np.maximum(floor, np.rint(train_counts * val_images / train_images)).astype(np.int64)
    counts = np.minimum(counts, val_images)
    capacity = min(MAX_OBJECTS, len(counts)) * val_images
    if counts.sum() > capacity:
        raise InputError(
            f"{val_images} validation images cannot show each of the {len(counts)} classes "
            f"{floor} times; use more validation images"
        )
    head = int(np.argmax(counts))
    counts[head] += max(0, val_images - int(counts.sum()))  # no image without an object
    return counts


def make_synthetic(
    out_dir: Path, spec: SyntheticSpec, progress: bool = True, overwrite: bool = False
) -> Path:
    """Write the dataset of ``spec`` to ``out_dir``; return ``out_dir``.

    Layout: ``annotations/lvis_v1_{train,val}.json`` and ``images/{train,val}/NNNNNN.png``
    (``file_name`` is relative to ``images/``). The folder is built beside ``out_dir`` and renamed
    into place, so ``out_dir`` is either absent or complete. An existing non-empty ``out_dir`` is an
    error unless ``overwrite``.
    """
    spec.check()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    plan = _plan(spec)
    tmp = make_temp_dir(out_dir.parent, out_dir.name)
    try:
        _write(tmp, spec, plan, progress)
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_synthetic(cache_root: Path, spec: SyntheticSpec) -> Path:
    """``cache_root/<spec.key()>``: made on first use, reused after (a racing maker is fine)."""
    spec.check()
    out_dir = Path(cache_root) / spec.key()
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            make_synthetic(out_dir, spec)
        except InputError:
            if not out_dir.exists():  # another process finished first: use its copy
                raise
    missing = [n for n in ANNOTATION_FILES.values() if not (out_dir / "annotations" / n).is_file()]
    if missing:
        raise InputError(f"cached dataset {out_dir} is incomplete (no {missing[0]}); delete it")
    return out_dir


def default_cache_root() -> Path:
    """``$GUMBEL_CACHE``, else ``$XDG_CACHE_HOME/gumbel-analysis``, else ``~/.cache/...``."""
    if os.environ.get("GUMBEL_CACHE"):
        return Path(os.environ["GUMBEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gumbel-analysis"


def group_summary(train: dict, val: dict | None = None) -> dict:
    """Per frequency group: classes, and images and instances in each split (LVIS dicts)."""
    group_of = {int(c["id"]): c["frequency"] for c in train["categories"]}
    summary = {g: {"classes": 0} for g in FREQUENCY_GROUPS}
    for g in group_of.values():
        summary[g]["classes"] += 1
    for split, data in (("train", train), ("val", val)):
        if data is None:
            continue
        images: dict[str, set[int]] = {g: set() for g in summary}
        instances = dict.fromkeys(summary, 0)
        for ann in data["annotations"]:
            g = group_of[int(ann["category_id"])]
            images[g].add(int(ann["image_id"]))
            instances[g] += 1
        for g in summary:
            summary[g][f"{split}_images"] = len(images[g])
            summary[g][f"{split}_instances"] = instances[g]
    return summary


# --- planning: which classes in which image ---------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    rank_of_class: np.ndarray  # frequency rank of class index k
    train_counts: np.ndarray  # training images per class index
    thresholds: tuple[int, int]
    objects: dict[str, list[list[int]]]  # split -> per image the class index of each object


def _plan(spec: SyntheticSpec) -> _Plan:
    rng = np.random.default_rng([spec.seed, 0])
    by_rank = train_image_counts(spec.classes, spec.train_images)
    rank_of_class = rng.permutation(spec.classes)
    train_counts = by_rank[rank_of_class]
    val_counts = val_image_counts(
        train_counts, spec.train_images, spec.val_images, spec.val_min_images
    )
    train = _objects(_assign(train_counts, spec.train_images, rng), rng)
    if spec.heldout:  # the training split's draws as they are; the validation split's apart
        rng = np.random.default_rng([spec.seed, 0, spec.heldout])
    objects = {"train": train, "val": _objects(_assign(val_counts, spec.val_images, rng), rng)}
    return _Plan(rank_of_class, train_counts, frequency_thresholds(spec.train_images), objects)


def _assign(counts: np.ndarray, images: int, rng: np.random.Generator) -> list[list[int]]:
    """Classes per image: class k in exactly ``counts[k]`` images, 1..MAX_OBJECTS per image."""
    per_image_cap = min(MAX_OBJECTS, len(counts))
    sizes = np.ones(images, dtype=np.int64)
    for _ in range(int(counts.sum()) - images):
        free = np.flatnonzero(sizes < per_image_cap)
        sizes[rng.choice(free)] += 1
    order = np.argsort(-counts, kind="stable")
    for attempt in range(20):
        capacity = sizes.copy()
        rows: list[list[int]] = [[] for _ in range(images)]
        for k in order:
            open_rows = np.flatnonzero(capacity > 0)
            if len(open_rows) < counts[k]:
                break
            if attempt < 19:  # random, favouring images with room left
                weights = capacity[open_rows] / capacity[open_rows].sum()
                chosen = rng.choice(open_rows, size=counts[k], replace=False, p=weights)
            else:  # Gale-Ryser greedy (most room first) always succeeds when any assignment does
                key = capacity[open_rows] + rng.random(len(open_rows)) * 0.5
                chosen = open_rows[np.argsort(-key, kind="stable")[: counts[k]]]
            for i in chosen:
                rows[i].append(int(k))
            capacity[chosen] -= 1
        else:
            return rows
    raise InputError(
        "could not spread the classes over the images; change --train-images or --classes"
    )


def _objects(classes_per_image: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    """One object per class present, plus a few extra objects of those classes."""
    result = []
    for present in classes_per_image:
        extra = int(rng.choice(len(_EXTRA_OBJECTS_P), p=_EXTRA_OBJECTS_P))
        extra = min(extra, MAX_OBJECTS - len(present))
        objects = list(present) + [int(rng.choice(present)) for _ in range(extra)]
        result.append(sorted(objects))
    return result


# --- drawing ----------------------------------------------------------------------------------


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (x, y) of a shape around the origin, y pointing down, extent about [-1, 1]."""
    if shape in ("circle", "ellipse"):
        t = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        return np.stack([np.cos(t), np.sin(t) * (0.45 if shape == "ellipse" else 1.0)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "triangle":
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a = 0.34
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
             [-1, a], [-1, -a], [-a, -a]],
            dtype=float,
        )  # fmt: skip
    if shape == "diamond":
        return np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=float)
    if shape == "crescent":
        # the unit disc minus a disc of radius 0.85 centred at (-0.45, 0): outer arc, inner arc
        outer = np.linspace(np.deg2rad(-122.2), np.deg2rad(122.2), 16)
        inner = np.linspace(np.deg2rad(95.6), np.deg2rad(-95.6), 12)
        return np.concatenate(
            [
                np.stack([np.cos(outer), np.sin(outer)], 1),
                np.stack([-0.45 + 0.85 * np.cos(inner), 0.85 * np.sin(inner)], 1),
            ]
        )
    raise ValueError(f"unknown shape {shape}")


def _rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)) * 255.0


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A greyish two-colour gradient with pixel noise and a few faint lines (float RGB)."""
    c0 = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.35, 0.75))
    c1 = _rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.35, 0.75))
    theta = rng.uniform(0, 2 * np.pi)
    axis = np.arange(size, dtype=np.float32) / (size - 1)
    ramp = np.cos(theta) * axis[None, :] + np.sin(theta) * axis[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 6.0
    image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * ramp[..., None] + noise
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        grey = int(rng.uniform(70, 190))
        xy = [float(v) for v in rng.uniform(0, size, 4)]
        draw.line(xy, fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float64)


def _place(
    index: int, size: int, occupied: np.ndarray, rng: np.random.Generator, extent: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Polygon (absolute x, y) of class ``index`` that keeps clear of ``occupied``, or None."""
    shape = class_appearance(index)[0]
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _unit_polygon(shape) * np.exp(rng.normal(0.0, 0.08, 2)) @ rotation.T
    points -= points.min(0)
    points *= extent / points.max()
    w, h = points.max(0)
    x0 = rng.uniform(1.0, size - 1.0 - w)
    y0 = rng.uniform(1.0, size - 1.0 - h)
    points += (x0, y0)
    left, top = max(0, int(x0) - MASK_GAP - 1), max(0, int(y0) - MASK_GAP - 1)
    right = min(size, math.ceil(x0 + w) + MASK_GAP + 1)
    bottom = min(size, math.ceil(y0 + h) + MASK_GAP + 1)
    local = [(float(x) - left, float(y) - top) for x, y in points]
    crop = Image.new("L", (right - left, bottom - top), 0)
    # the outline is drawn centred on the edges: it grows the shape by MASK_GAP on each side
    ImageDraw.Draw(crop).polygon(local, fill=1, outline=1, width=1 + 2 * MASK_GAP)
    if (occupied[top:bottom, left:right] & np.asarray(crop, dtype=bool)).any():
        return None
    crop = Image.new("L", crop.size, 0)
    ImageDraw.Draw(crop).polygon(local, fill=1)
    mask = np.zeros_like(occupied)
    mask[top:bottom, left:right] = np.asarray(crop, dtype=bool)
    occupied |= mask
    return points, mask


def _paint(image: np.ndarray, mask: np.ndarray, index: int, rng: np.random.Generator) -> None:
    """Fill ``mask`` with the class's colour and texture (tone and hue jittered per object)."""
    _, colour, texture = class_appearance(index)
    hue = HUES[colour] + rng.uniform(-6.0, 6.0)
    saturation, value = rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
    light, dark = _rgb(hue, saturation, value), _rgb(hue, saturation, value * 0.5)
    ys, xs = np.nonzero(mask)
    if texture == "solid":
        pattern = np.zeros(len(xs), dtype=bool)
    else:
        span = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        period = max(3, round(span / 6))
        phase = int(rng.integers(0, period))
        if texture == "striped":
            pattern = ((xs + ys + phase) // period) % 2 == 1
        else:
            pattern = ((xs + phase) // period + (ys + phase) // period) % 2 == 1
    image[ys, xs] = np.where(pattern[:, None], dark, light)


def _render(
    spec: SyntheticSpec, split: str, number: int, objects: list[int]
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The image and (class index, polygon) of each object; seeded by (seed, split, number)."""
    rng = np.random.default_rng([spec.seed, 1 + list(ANNOTATION_FILES).index(split), number])
    if split == "val" and spec.heldout:
        rng = np.random.default_rng([spec.seed, 2, number, spec.heldout])
    size = spec.size
    image = _background(size, rng)
    low, high = OBJECT_SIZE[0] * size, OBJECT_SIZE[1] * size * (1.0 if len(objects) <= 2 else 0.8)
    extents = np.exp(rng.uniform(np.log(low), np.log(high), len(objects)))
    occupied = np.zeros((size, size), dtype=bool)
    placed = []
    for i in np.argsort(-extents, kind="stable"):  # largest first: easier to fit
        extent = float(extents[i])
        for attempt in range(200):
            if attempt and attempt % 10 == 0:
                extent = max(low, extent * 0.85)
            result = _place(objects[i], size, occupied, rng, extent)
            if result is not None:
                break
        else:
            raise RuntimeError(f"cannot place object {i} of {split} image {number}")
        points, mask = result
        _paint(image, mask, objects[i], rng)
        placed.append((objects[i], points))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), placed


# --- writing ----------------------------------------------------------------------------------


def _categories(spec: SyntheticSpec, plan: _Plan, instances: np.ndarray) -> list[dict]:
    categories = []
    for k in range(spec.classes):
        shape, colour, texture = class_appearance(k)
        name = class_name(k)
        count = int(plan.train_counts[k])
        categories.append(
            {
                "id": k + 1,
                "name": name,
                "synset": f"{name}.n.01",
                "synonyms": [name],
                "def": f"a {colour} {shape}" + ("" if texture == "solid" else f", {texture}"),
                "frequency": frequency_group(count, plan.thresholds),
                "image_count": count,
                "instance_count": int(instances[k]),
            }
        )
    return categories


def _write(root: Path, spec: SyntheticSpec, plan: _Plan, progress: bool) -> None:
    (root / "annotations").mkdir()
    total = spec.train_images + spec.val_images
    bar = _progress_bar(progress)
    task = bar.add_task("synthetic LVIS images", total=total) if bar else None
    splits = {}
    image_id = annotation_id = 0
    with bar or contextlib.nullcontext():
        for split, per_image in plan.objects.items():
            (root / "images" / split).mkdir(parents=True)
            images, annotations = [], []
            for number, objects in enumerate(per_image, start=1):
                image_id += 1
                pixels, placed = _render(spec, split, number, objects)
                file_name = f"{split}/{number:06d}.png"
                Image.fromarray(pixels).save(root / "images" / file_name, compress_level=1)
                present = {k for k, _ in placed}
                absent = [k for k in range(spec.classes) if k not in present]
                held = [spec.heldout] if split == "val" and spec.heldout else []
                rng = np.random.default_rng([spec.seed, 9, image_id, *held])
                negatives = rng.choice(absent, size=min(NEG_PER_IMAGE, len(absent)), replace=False)
                images.append(
                    {
                        "id": image_id,
                        "file_name": file_name,
                        "coco_url": f"http://synthetic.invalid/{file_name}",
                        "height": spec.size,
                        "width": spec.size,
                        "neg_category_ids": sorted(int(k) + 1 for k in negatives),
                        "not_exhaustive_category_ids": [],
                        "license": 0,
                    }
                )
                for k, points in placed:
                    annotation_id += 1
                    annotations.append(_annotation(annotation_id, image_id, k, points, spec.size))
                if bar is not None:
                    bar.advance(task)
            splits[split] = (images, annotations)
    instances = np.bincount(
        [a["category_id"] - 1 for a in splits["train"][1]], minlength=spec.classes
    )
    categories = _categories(spec, plan, instances)
    for split, (images, annotations) in splits.items():
        data = {
            "info": _info(spec, plan, split),
            "licenses": [{"id": 0, "name": "synthetic, public domain", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        text = json.dumps(data, separators=(",", ":"))
        (root / "annotations" / ANNOTATION_FILES[split]).write_text(text)


def _annotation(ann_id: int, image_id: int, k: int, points: np.ndarray, size: int) -> dict:
    import pycocotools.mask as mask_utils

    polygon = [round(float(v), 2) for v in points.reshape(-1)]
    xs, ys = polygon[0::2], polygon[1::2]
    rle = mask_utils.frPyObjects([polygon], size, size)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": k + 1,
        "segmentation": [polygon],
        "bbox": [
            round(min(xs), 2),
            round(min(ys), 2),
            round(max(xs) - min(xs), 2),
            round(max(ys) - min(ys), 2),
        ],
        "area": float(mask_utils.area(mask_utils.merge(rle))),
    }


def _info(spec: SyntheticSpec, plan: _Plan, split: str) -> dict:
    rare, common = plan.thresholds
    return {
        "description": f"gumbel-analysis synthetic long-tailed LVIS v1 dataset, {split} split",
        "version": str(GENERATOR_VERSION),
        "spec": spec.recorded(),
        "key": spec.key(),
        "frequency_thresholds": {
            "rare_max_images": rare,
            "common_max_images": common,
            "rule": "rare <= max(1, M // 100) training images, common <= max(rare + 1, M // 10), "
            "frequent above (LVIS's 10 and 100 scaled to 1000 images)",
        },
        "image_count_split": "train",
    }


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.parent.is_dir():
        raise InputError(f"output folder's parent does not exist: {out_dir.parent}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path exists and is not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"output folder is not empty: {out_dir} (use --overwrite to replace it)")


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    old = None
    if overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)  # atomic; an empty folder is replaced, a full one refused
    except OSError as err:
        if old is not None:
            os.replace(old, out_dir)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise InputError(f"output folder is not empty: {out_dir}") from None
        raise InputError(f"cannot create {out_dir}: {err.strerror or err}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

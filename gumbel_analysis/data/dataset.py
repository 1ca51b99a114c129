"""An LVIS v1 split as a torch Dataset in torchvision's detection format (Mask R-CNN targets)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image

from gumbel_analysis.data import lvis_io
from gumbel_analysis.errors import InputError


def image_path(image_root: Path, image: dict) -> Path:
    """The file of an LVIS image: ``file_name`` if given, else the last two parts of ``coco_url``.

    Real LVIS v1 has no ``file_name``; its ``coco_url`` ends in ``train2017/000000391895.jpg``, the
    COCO folder and file name (the same rule as detectron2).
    """
    if image.get("file_name"):
        return Path(image_root) / image["file_name"]
    if image.get("coco_url"):
        return Path(image_root).joinpath(*str(image["coco_url"]).split("/")[-2:])
    raise InputError(f"image {image['id']} has neither file_name nor coco_url")


class LVISDetection(torch.utils.data.Dataset):
    """Images and instance targets of one LVIS annotation file.

    Labels follow torchvision: category ``categories[i]`` has label ``i + 1`` and 0 is the
    background. ``class_frequency`` is ``f_c = image_count / images`` of this file, which is the
    training frequency only for the training file (LVIS counts ``image_count`` on train).
    Annotations with an empty box are dropped (torchvision rejects them in training).
    """

    def __init__(
        self, ann_file: Path, image_root: Path, train: bool, hflip_prob: float | None = None
    ) -> None:
        self.ann_file, self.image_root, self.train = Path(ann_file), Path(image_root), train
        self.hflip_prob = (0.5 if train else 0.0) if hflip_prob is None else float(hflip_prob)
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise InputError(f"flip probability must be in [0, 1], got {self.hflip_prob}")
        data = lvis_io.load_lvis_json(self.ann_file)
        if not data["images"]:
            raise InputError(f"annotation file {self.ann_file} has no images")
        if not data["annotations"]:
            raise InputError(f"annotation file {self.ann_file} has no annotations")
        self.data = data
        self.categories = lvis_io.sorted_categories(data)
        self.category_ids = [int(c["id"]) for c in self.categories]
        self.frequency_groups = lvis_io.frequency_groups(data)
        self.class_frequency = lvis_io.class_frequency(data)
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        self.images = sorted(data["images"], key=lambda im: int(im["id"]))
        self.image_ids = [int(im["id"]) for im in self.images]
        self.paths = [image_path(self.image_root, im) for im in self.images]
        for path, image in zip(self.paths, self.images, strict=True):
            _check_image_header(path, image)

        # Own references to the annotation parts: LVISEval later replaces ann["segmentation"]
        # by RLE in the dicts it is given, which must not change what this dataset returns.
        per_image: dict[int, list[tuple]] = {i: [] for i in self.image_ids}
        for ann in sorted(data["annotations"], key=lambda a: int(a["id"])):
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            if "segmentation" not in ann:
                raise InputError(f"{self.ann_file}: annotation {ann['id']} has no segmentation")
            per_image[int(ann["image_id"])].append(
                (
                    [x, y, x + w, y + h],
                    label_of[int(ann["category_id"])],
                    ann["segmentation"],
                    float(ann.get("area", w * h)),
                    int(ann.get("iscrowd", 0)),
                )
            )
        self._targets = [per_image[i] for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """Image ``i`` and its target; ``key`` is ``i`` or ``(i, seed)``.

        With a seed the random flip is drawn from a generator seeded with it (the training loop
        gives every sample of an epoch its own seed, so the flips do not depend on the worker
        that loads it); with ``i`` alone from torch's global RNG.
        """
        i, seed = (key, None) if not isinstance(key, tuple) else key
        image = self._read_image(i)
        height, width = image.shape[1:]
        anns = self._targets[i]
        boxes = torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = _decode(ann[2], height, width)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": self.image_ids[i],
            "area": torch.tensor([a[3] for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([a[4] for a in anns], dtype=torch.int64),
        }
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        if self.hflip_prob > 0 and torch.rand((), generator=gen).item() < self.hflip_prob:
            image, target = _hflip(image, target)
        return image, target

    def image(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` and its id, without its targets: prediction decodes no ground truth."""
        return self._read_image(i), self.image_ids[i]

    def _read_image(self, i: int) -> torch.Tensor:
        try:
            with Image.open(self.paths[i]) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for a damaged file
            raise InputError(
                f"cannot read image {self.paths[i]} (image {self.image_ids[i]}): "
                f"{_short_cause(err, self.paths[i])}"
            ) from None
        image = self.images[i]
        if pixels.shape[:2] != (int(image["height"]), int(image["width"])):
            raise InputError(
                f"image {self.paths[i]} is {pixels.shape[1]}x{pixels.shape[0]}, the annotation "
                f"file says {image['width']}x{image['height']}"
            )
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)

    def image_categories(self) -> list[set[int]]:
        """The labels present in each image (dataset order), for repeat factors."""
        return [{a[1] for a in anns} for anns in self._targets]


def _check_image_header(path: Path, image: dict) -> None:
    """The file exists, is an image PIL can identify, and has the annotated size: only the
    header is read, so a corrupt file is named at load, not by a worker in the middle of a run."""
    if not os.path.isfile(path):
        what = "is a folder, not an image file" if os.path.isdir(path) else "not found"
        raise InputError(f"image file {what}: {path} (image {image['id']})")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(
            f"cannot read image {path} (image {image['id']}): {_short_cause(err, path)}"
        ) from None
    if (height, width) != (int(image["height"]), int(image["width"])):
        raise InputError(
            f"image {path} (image {image['id']}) is {width}x{height}, the annotation file says "
            f"{image['width']}x{image['height']}"
        )


def _short_cause(err: Exception, path: Path) -> str:
    """PIL's reason without the path it repeats: 'cannot identify image file', 'truncated'."""
    text = str(err).replace(repr(str(path)), "").replace(str(path), "").strip(" :'\"")
    text = " ".join(text.split())
    return (text or type(err).__name__)[:120]


def _decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A binary mask from polygons, uncompressed or compressed RLE (union of the parts)."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


def _hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = dict(target, boxes=boxes, masks=target["masks"].flip(-1))
    return image.flip(-1), flipped


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """Images and targets as two lists (detection models take images of different sizes)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)

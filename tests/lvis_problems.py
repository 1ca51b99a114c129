"""Small random LVIS problems that exercise every rule of lvis-api's evaluation.

Each problem has: rare/common/frequent categories; images without ground truth; ground truth of
all three sizes, some of area 0, one with ``ignore``, polygons and RLE masks; negative and
not-exhaustive categories; detections on positive, negative and unverified categories, more than
``max_dets`` on some images, quantised scores (many ties), exact copies of ground truth (equal
IoUs), boxes of zero width and empty masks (area 0).
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

SIZE = (150, 170)  # height, width: large objects (> 96²) fit


def _rect_mask(h: int, w: int, box: list[float]) -> np.ndarray:
    x, y, bw, bh = (round(v) for v in box)
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[max(y, 0) : max(y + bh, 0), max(x, 0) : max(x + bw, 0)] = 1
    return m


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _random_box(rng: np.random.Generator, h: int, w: int) -> list[float]:
    kind = rng.integers(3)
    side = [rng.integers(4, 30), rng.integers(33, 90), rng.integers(100, 140)][kind]
    bw = int(np.clip(side + rng.integers(-3, 4), 2, w - 1))
    bh = int(np.clip(side + rng.integers(-3, 4), 2, h - 1))
    x = int(rng.integers(0, w - bw))
    y = int(rng.integers(0, h - bh))
    return [float(x), float(y), float(bw), float(bh)]


def make_problem(seed: int, num_images: int = 24, num_cats: int = 9, dets_per_image: int = 14):
    """(ground truth dict, results list); results carry both bbox and segmentation."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    freqs = ["r", "c", "f"] * (num_cats // 3) + ["f"] * (num_cats % 3)
    cat_ids = sorted(rng.choice(np.arange(1, 5 * num_cats), num_cats, replace=False).tolist())
    categories = [
        {"id": c, "name": f"cat{c}", "frequency": f} for c, f in zip(cat_ids, freqs, strict=True)
    ]
    image_ids = rng.choice(np.arange(1, 10 * num_images), num_images, replace=False).tolist()
    images, anns, results = [], [], []
    ann_id = 1
    for n, image_id in enumerate(image_ids):
        no_gt = n % 6 == 5
        positives = [] if no_gt else rng.choice(cat_ids, rng.integers(1, 4), replace=False).tolist()
        others = [c for c in cat_ids if c not in positives]
        negatives = rng.choice(others, rng.integers(0, 3), replace=False).tolist()
        not_exhaustive = [c for c in positives if rng.random() < 0.3]
        images.append(
            {
                "id": int(image_id),
                "height": h,
                "width": w,
                "neg_category_ids": [int(c) for c in negatives],
                "not_exhaustive_category_ids": [int(c) for c in not_exhaustive],
            }
        )
        boxes = []
        for c in positives:
            for _ in range(rng.integers(1, 4)):
                box = _random_box(rng, h, w)
                x, y, bw, bh = box
                ann = {
                    "id": ann_id,
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": box,
                    "area": float(bw * bh),
                }
                if rng.random() < 0.5:
                    ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                else:
                    ann["segmentation"] = _rle(_rect_mask(h, w, box))
                if rng.random() < 0.05:
                    ann["area"] = 0  # left out by lvis-api (0 < area)
                if rng.random() < 0.04:
                    ann["ignore"] = 1
                anns.append(ann)
                boxes.append((int(c), box))
                ann_id += 1
                if rng.random() < 0.15:  # a duplicate: equal IoUs for every detection
                    anns.append({**ann, "id": ann_id})
                    ann_id += 1
        for _ in range(dets_per_image + int(rng.integers(-6, 8))):
            r = rng.random()
            if boxes and r < 0.55:
                c, box = boxes[rng.integers(len(boxes))]
                if rng.random() < 0.3:
                    box = list(box)  # an exact copy
                else:
                    box = [v + float(rng.integers(-6, 7)) for v in box[:2]] + [
                        max(v + float(rng.integers(-8, 9)), 1.0) for v in box[2:]
                    ]
            else:
                c = int(rng.choice(cat_ids))  # positive, negative or unverified
                box = _random_box(rng, h, w)
            if rng.random() < 0.03:
                box[2] = 0.0  # zero area
            score = float(rng.integers(1, 12)) / 12  # many equal scores
            mask = _rect_mask(h, w, box)
            if rng.random() < 0.03:
                mask[:] = 0  # an empty mask: area 0 in segm
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": [round(v, 2) for v in box],
                    "score": score,
                    "segmentation": _rle(mask),
                }
            )
    perm = rng.permutation(len(results))  # file order is not image order
    results = [results[i] for i in perm]
    gt = {"images": images, "annotations": anns, "categories": categories}
    return gt, results

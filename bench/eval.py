"""Benchmark of ``gumbel eval RESULTS --gt`` against lvis-api 0.5.3 on an LVIS-like problem.

Generates an LVIS v1-val-like ground truth (1,203 categories with LVIS's 337/461/405 rare /
common / frequent split, ~12 polygon instances per 480x640 image over ~3 categories, ~6
negative categories per image, some not-exhaustive ones) and a results file with 300 detections
per image, boxes and compressed-RLE masks: ~45% near ground truth (mostly the right category),
~15% on the image's negative categories, the rest on random (mostly unverified) categories.

Each evaluator runs in its own process (``taskset`` to 2 cores where available), boxes and
masks in one run, reading the files included; wall time and peak RSS (``ru_maxrss`` from
``os.wait4``) are printed with their ratios, and every metric is compared (``|diff| <= 1e-12``).

    nice .venv/bin/python bench/eval.py --images 2000 [--images 5000] [--full] [--keep DIR]

``--full`` adds the project's evaluator alone at LVIS val size (19,809 images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H, W = 480, 640
NUM_CATS = 1203
PER_IMAGE = 300


def octagon(box: np.ndarray) -> list[float]:
    x, y, w, h = box
    a, b = w / 4, h / 4
    pts = [x + a, y, x + w - a, y, x + w, y + b, x + w, y + h - b]
    pts += [x + w - a, y + h, x + a, y + h, x, y + h - b, x, y + b]
    return [round(float(v), 2) for v in pts]


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(8), np.log(400), n))
    w = np.clip(side * rng.uniform(0.6, 1.6, n), 2, W - 1)
    h = np.clip(side * rng.uniform(0.6, 1.6, n), 2, H - 1)
    x = rng.uniform(0, 1, n) * (W - w)
    y = rng.uniform(0, 1, n) * (H - h)
    return np.stack([x, y, w, h], axis=1)


def make_problem(folder: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)
    groups = np.array(["r"] * 337 + ["c"] * 461 + ["f"] * 405)
    rng.shuffle(groups)
    weight = np.where(groups == "r", 1.0, np.where(groups == "c", 10.0, 100.0))
    weight /= weight.sum()
    categories = [
        {"id": i + 1, "name": f"category_{i + 1}", "frequency": str(g)}
        for i, g in enumerate(groups)
    ]
    images, annotations = [], []
    gt_path, res_path = folder / "gt.json", folder / "results.json"
    ann_id = 1
    with res_path.open("w") as res:
        res.write("[")
        first = True
        for image_id in range(1, num_images + 1):
            pos = rng.choice(NUM_CATS, rng.integers(1, 6), replace=False, p=weight) + 1
            others = np.setdiff1d(np.arange(1, NUM_CATS + 1), pos)
            neg = rng.choice(others, 6, replace=False)
            nel = pos[rng.random(len(pos)) < 0.15]
            images.append(
                {
                    "id": image_id,
                    "height": H,
                    "width": W,
                    "neg_category_ids": neg.tolist(),
                    "not_exhaustive_category_ids": nel.tolist(),
                }
            )
            n_gt = rng.integers(1, 24)
            gt_cat = rng.choice(pos, n_gt)
            gt_box = random_boxes(rng, n_gt)
            for c, box in zip(gt_cat.tolist(), gt_box, strict=True):
                poly = octagon(box)
                area = float(mask_utils.area(mask_utils.frPyObjects([poly], H, W))[0])
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": c,
                        "bbox": [round(float(v), 2) for v in box],
                        "area": area,
                        "segmentation": [poly],
                    }
                )
                ann_id += 1
            n_near, n_neg = int(0.45 * PER_IMAGE), int(0.15 * PER_IMAGE)
            k = rng.integers(0, n_gt, n_near)
            near = gt_box[k] + rng.normal(0, 1, (n_near, 4)) * gt_box[k, 2:].repeat(2).reshape(
                -1, 4
            ) * np.array([0.1, 0.1, 0.1, 0.1])
            near[:, 2:] = np.maximum(near[:, 2:], 1.0)
            near_cat = np.where(
                rng.random(n_near) < 0.7, gt_cat[k], rng.integers(1, NUM_CATS + 1, n_near)
            )
            rest = PER_IMAGE - n_near
            boxes = np.concatenate([near, random_boxes(rng, rest)])
            cats = np.concatenate(
                [
                    near_cat,
                    rng.choice(neg, n_neg),
                    rng.integers(1, NUM_CATS + 1, rest - n_neg),
                ]
            )
            boxes[:, 0] = np.clip(boxes[:, 0], 0, W - 2)
            boxes[:, 1] = np.clip(boxes[:, 1], 0, H - 2)
            boxes[:, 2] = np.minimum(boxes[:, 2], W - boxes[:, 0])
            boxes[:, 3] = np.minimum(boxes[:, 3], H - boxes[:, 1])
            scores = np.round(rng.beta(0.7, 3, PER_IMAGE), 4)  # 4 decimals: some ties
            rles = mask_utils.frPyObjects([octagon(b) for b in boxes], H, W)
            parts = []
            for c, b, s, r in zip(
                cats.tolist(), boxes.round(2).tolist(), scores.tolist(), rles, strict=True
            ):
                parts.append(
                    f'{{"image_id":{image_id},"category_id":{c},"bbox":[{b[0]},{b[1]},{b[2]},'
                    f'{b[3]}],"score":{s},"segmentation":{{"size":[{H},{W}],"counts":'
                    f"{json.dumps(r['counts'].decode())}}}}}"
                )
            res.write(("" if first else ",") + ",".join(parts))
            first = False
        res.write("]")
    gt_path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return gt_path, res_path


LVIS_API = r"""
import json, sys, warnings, logging
warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
from gumbel_analysis.evaluation.compat import patch_lvis_numpy
patch_lvis_numpy()
from lvis import LVIS, LVISEval, LVISResults
gt_path, res_path = sys.argv[1], sys.argv[2]
gt = LVIS(gt_path)
with open(res_path) as f:
    results = json.load(f)
out = {}
for iou_type in ("segm", "bbox"):
    if iou_type == "segm":  # detectron2's convention: mask areas for segm
        dts = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        dts = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    ev = LVISEval(gt, LVISResults(gt, dts, max_dets=300), iou_type)
    ev.run()
    out[iou_type] = {k: float(v) for k, v in ev.results.items()}
    del ev, dts
print(json.dumps(out))
"""

PROJECT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from gumbel_analysis.evaluation import lvis_eval
from gumbel_analysis.evaluation.results import read_results
gt = lvis_eval.load_ground_truth(sys.argv[1])
dets = read_results(sys.argv[2])
out = {t: lvis_eval.evaluate(gt, dets, t) for t in ("segm", "bbox")}
print(json.dumps(out))
"""


def run(code: str, gt: Path, res: Path) -> tuple[dict, float, float]:
    cmd = [sys.executable, "-c", code, str(gt), str(res)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0,1", *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"evaluator failed (status {status})")
    return json.loads(out), wall, usage.ru_maxrss / 1024**2  # KiB -> GiB


def compare(a: dict, b: dict) -> float:
    return max(abs(a[t][k] - b[t][k]) for t in a for k in a[t])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, action="append", help="default: 2000 and 5000")
    parser.add_argument("--full", action="store_true", help="the project alone at 19,809 images")
    parser.add_argument("--no-lvis", action="store_true", help="skip lvis-api")
    parser.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    args = parser.parse_args()
    sizes = args.images or [2000, 5000]
    root = args.keep or Path(tempfile.mkdtemp(prefix="eval_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}")
    rows = []
    try:
        for n in [*sizes, *([19809] if args.full else [])]:
            folder = root / str(n)
            folder.mkdir(exist_ok=True)
            gt, res = folder / "gt.json", folder / "results.json"
            if not (gt.is_file() and res.is_file()):
                t0 = time.perf_counter()
                make_problem(folder, n)
                print(
                    f"{n} images: generated in {time.perf_counter() - t0:.0f} s, results "
                    f"{res.stat().st_size / 1e9:.2f} GB, gt {gt.stat().st_size / 1e6:.0f} MB"
                )
            ours, t_ours, m_ours = run(PROJECT, gt, res)
            print(f"{n} images, project: {t_ours:.1f} s, {m_ours:.2f} GiB peak", flush=True)
            if n == 19809 or args.no_lvis:
                rows.append((n, t_ours, m_ours, None, None, None))
                continue
            ref, t_ref, m_ref = run(LVIS_API, gt, res)
            diff = compare(ours, ref)
            print(
                f"{n} images, lvis-api: {t_ref:.1f} s, {m_ref:.2f} GiB peak; "
                f"max |metric diff| {diff:.3g}",
                flush=True,
            )
            rows.append((n, t_ours, m_ours, t_ref, m_ref, diff))
            if diff > 1e-12:
                print("METRICS DIFFER", json.dumps({"project": ours, "lvis-api": ref}))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")
    print(
        "\nimages | project s | project GiB | lvis-api s | lvis-api GiB | speed-up | memory ratio"
        " | max |diff|"
    )
    for n, t, m, tr, mr, d in rows:
        if tr is None:
            print(f"{n} | {t:.1f} | {m:.2f} | - | - | - | - | -")
        else:
            print(
                f"{n} | {t:.1f} | {m:.2f} | {tr:.1f} | {mr:.2f} | {tr / t:.1f}x | "
                f"{mr / m:.1f}x | {d:.2g}"
            )


if __name__ == "__main__":
    main()

"""Benchmark of ``gumbel kl-dist`` on an LVIS-val-sized problem, against a plain Python loop.

Generates (once, into a temporary folder) an LVIS-like ground truth (20,000 images, 1,203
categories with LVIS's 337/461/405 rare/common/frequent split, ~12 instances per image with
polygons), a bbox results file with 300 detections per image (6 million entries) and a segm
results file with the same detections carrying RLE strings. Each measurement runs in its own
process; its wall time and peak resident memory (``ru_maxrss`` of that process, from
``os.wait4``) are printed, JSON parsing and interpreter start included.

The baseline is the straightforward per-image loop: ``json.load`` both files, a dict of
per-image category masses filled detection by detection, and the KL summed per image in Python.
The bench checks that both give the same mean, median, per-group means and dataset KL.

    nice .venv/bin/python bench/kl_dist.py [--images 20000] [--per-image 300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gumbel_analysis.groups import GROUP_NAMES

EPS = 1e-6


# ----------------------------------------------------------------------------- the problem


def make_ground_truth(path: Path, num_images: int, rng: np.random.Generator) -> np.ndarray:
    """LVIS-like GT; returns each image's GT category ids (object array) for the detections."""
    groups = np.array(["r"] * 337 + ["c"] * 461 + ["f"] * 405)
    rng.shuffle(groups)
    image_count = np.where(
        groups == "r",
        rng.integers(1, 11, len(groups)),
        np.where(groups == "c", rng.integers(11, 101, len(groups)), rng.integers(101, 5000, 1203)),
    )
    categories = [
        {
            "id": i + 1,
            "name": f"category_{i + 1}",
            "synset": f"synset_{i + 1}.n.01",
            "frequency": str(g),
            "image_count": int(n),
            "instance_count": int(3 * n),
        }
        for i, (g, n) in enumerate(zip(groups, image_count, strict=True))
    ]
    weights = image_count / image_count.sum()
    image_ids = np.sort(rng.choice(np.arange(1, 600_000), num_images, replace=False))
    images, annotations, per_image = [], [], []
    for image_id in image_ids:
        h, w = int(rng.integers(300, 641)), int(rng.integers(300, 641))
        images.append(
            {
                "id": int(image_id),
                "height": h,
                "width": w,
                "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        if rng.random() < 0.01:  # a few images without instances (no target)
            per_image.append(np.empty(0, dtype=np.int64))
            continue
        cats = rng.choice(1203, size=1 + rng.poisson(2.5), p=weights, replace=False) + 1
        per_image.append(cats)
        for cat in cats:
            for _ in range(1 + rng.poisson(2.0)):
                x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
                bw, bh = rng.uniform(5, w - x), rng.uniform(5, h - y)
                angles = np.sort(rng.uniform(0, 2 * np.pi, 20))
                poly = np.stack(
                    [x + bw / 2 * (1 + np.cos(angles)), y + bh / 2 * (1 + np.sin(angles))], 1
                )
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(image_id),
                        "category_id": int(cat),
                        "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                        "area": round(bw * bh * 0.7, 2),
                        "segmentation": [np.round(poly.ravel(), 2).tolist()],
                    }
                )
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return image_ids, per_image, weights


def make_detections(image_ids, per_image_cats, weights, per_image: int, rng) -> tuple:
    """``per_image`` detections per image: a third on its GT categories, the rest anywhere."""
    n = len(image_ids) * per_image
    image = np.repeat(image_ids, per_image)
    category = rng.choice(1203, size=n, p=weights) + 1
    score = rng.beta(0.6, 6.0, n)
    on_gt = rng.random(n) < 1 / 3
    for i, cats in enumerate(per_image_cats):
        if len(cats):
            sl = slice(i * per_image, (i + 1) * per_image)
            pick = on_gt[sl]
            category[sl][pick] = rng.choice(cats, size=int(pick.sum()))
            score[sl][pick] = rng.beta(2.0, 2.0, int(pick.sum()))
    return image, category, np.round(score, 6)


def write_results(path: Path, image, category, score, rng, segm: bool) -> None:
    """Write like detectron2's json.dump of a list: one object per detection."""
    boxes = np.round(rng.uniform(0, 600, (len(image), 4)), 2)
    if segm:
        alphabet = np.array([chr(c) for c in range(48, 112) if chr(c) != "\\"])
        pool = ["".join(rng.choice(alphabet, int(k))) for k in rng.integers(60, 260, 4096)]
        pick = rng.integers(0, len(pool), len(image))
    with path.open("w") as f:
        f.write("[")
        step = 200_000
        for s in range(0, len(image), step):
            e = min(len(image), s + step)
            if segm:
                parts = [
                    f'{{"image_id": {image[i]}, "category_id": {category[i]}, "segmentation": '
                    f'{{"size": [480, 640], "counts": "{pool[pick[i]]}"}}, "score": {score[i]}}}'
                    for i in range(s, e)
                ]
            else:
                b = boxes
                parts = [
                    f'{{"image_id": {image[i]}, "category_id": {category[i]}, "bbox": '
                    f"[{b[i, 0]}, {b[i, 1]}, {b[i, 2]}, {b[i, 3]}], "
                    f'"score": {score[i]}}}'
                    for i in range(s, e)
                ]
            f.write((", " if s else "") + ", ".join(parts))
        f.write("]")


# ----------------------------------------------------------------------------- the baseline


def baseline(gt_path: str, results_path: str, eps: float) -> dict:
    """The straightforward per-image loop over dicts, giving the command's summary numbers."""
    with open(gt_path) as f:
        gt = json.load(f)
    category_ids = {c["id"] for c in gt["categories"]}
    frequency = {c["id"]: c["frequency"] for c in gt["categories"]}
    num_categories = len(category_ids)
    image_ids = {im["id"] for im in gt["images"]}
    target: dict[int, dict[int, int]] = {}
    for ann in gt["annotations"]:
        counts = target.setdefault(ann["image_id"], {})
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    del gt
    mass: dict[int, dict[int, float]] = {}
    histogram: dict[int, float] = {}
    with open(results_path) as f:
        detections = json.load(f)
    for det in detections:
        image_id, category_id, score = det["image_id"], det["category_id"], det["score"]
        if image_id not in image_ids or category_id not in category_ids:
            raise SystemExit(f"unknown id in detection {det}")
        if image_id not in target:
            continue
        per_image = mass.setdefault(image_id, {})
        per_image[category_id] = per_image.get(category_id, 0.0) + score
        histogram[category_id] = histogram.get(category_id, 0.0) + score
    kl = {}
    for image_id, counts in target.items():
        instances = sum(counts.values())
        predicted = mass.get(image_id, {})
        total = sum(predicted.values()) + num_categories * eps
        value = 0.0
        for category_id, n in counts.items():
            t = n / instances
            value += t * math.log(t / ((predicted.get(category_id, 0.0) + eps) / total))
        kl[image_id] = value
    groups = {}
    for g, name in GROUP_NAMES.items():
        members = [kl[i] for i, counts in target.items() if any(frequency[c] == g for c in counts)]
        groups[name] = statistics.fmean(members) if members else math.nan
    target_hist: dict[int, int] = {}
    for counts in target.values():
        for c, n in counts.items():
            target_hist[c] = target_hist.get(c, 0) + n
    instances = sum(target_hist.values())
    total = sum(histogram.values()) + num_categories * eps
    dataset = sum(
        n / instances * math.log(n / instances / ((histogram.get(c, 0.0) + eps) / total))
        for c, n in target_hist.items()
    )
    values = list(kl.values())
    return {
        "kl_mean": statistics.fmean(values),
        "kl_median": statistics.median(values),
        "groups": groups,
        "dataset_kl": dataset,
    }


# ----------------------------------------------------------------------------- measuring


def measure(args: list[str]) -> dict:
    """Wall and CPU seconds, peak memory and stdout of one process (and the workers it forks).

    ``rss`` is ``ru_maxrss`` (the largest process of the tree); ``pss`` is the largest sum over the
    tree of the proportional set size (shared pages split between the processes sharing them),
    sampled every 0.1 s: the memory the command really holds.
    """
    peak_pss = [0.0]
    running = threading.Event()
    running.set()

    def sample(pid: int) -> None:
        while running.is_set():
            peak_pss[0] = max(peak_pss[0], sum(_pss_gb(p) for p in _tree(pid)))
            time.sleep(0.1)

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        running.clear()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.read()}")
        out.seek(0)
        return {
            "seconds": seconds,
            "cpu": usage.ru_utime + usage.ru_stime,  # workers included (they are reaped)
            "rss": usage.ru_maxrss / 1024**2,  # KiB -> GiB
            "pss": peak_pss[0],
            "stdout": out.read(),
        }


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return pids


def _pss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError):
        pass
    return 0.0


def figures(m: dict) -> str:
    return (
        f"{m['seconds']:6.1f} s wall, {m['cpu']:5.1f} s CPU, peak {m['pss']:.2f} GB "
        f"(PSS of the process tree; largest RSS {m['rss']:.2f} GB)"
    )


def command(gt: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gumbel_analysis", "kl-dist", "--gt", str(gt), str(results),
            "--eps", str(EPS), "--json", *extra]  # fmt: skip


def same_numbers(report: dict, base: dict) -> float:
    """Largest relative difference between the command's summary and the baseline's."""
    run = report["runs"][0]
    pairs = [
        (run["kl_mean"], base["kl_mean"]),
        (run["kl_median"], base["kl_median"]),
        (run["dataset_kl"], base["dataset_kl"]),
        *((run["kl_by_group"][n]["kl_mean"], base["groups"][n]) for n in GROUP_NAMES.values()),
    ]
    return max(abs(a - b) / max(abs(b), 1e-300) for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--per-image", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--no-segm", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline", nargs=2, metavar=("GT", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        print(json.dumps(baseline(*args.baseline, EPS)))
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="kl_dist_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    gt, bbox, segm = folder / "gt.json", folder / "bbox.json", folder / "segm.json"
    try:
        if not (gt.exists() and bbox.exists() and (args.no_segm or segm.exists())):
            start = time.perf_counter()
            rng = np.random.default_rng(0)
            image_ids, per_image_cats, weights = make_ground_truth(gt, args.images, rng)
            dets = make_detections(image_ids, per_image_cats, weights, args.per_image, rng)
            write_results(bbox, *dets, rng, segm=False)
            if not args.no_segm:
                write_results(segm, *dets, rng, segm=True)
            print(f"generated in {time.perf_counter() - start:.0f} s into {folder}")
        data = json.loads(gt.read_text())
        print(
            f"problem: {len(data['images']):,} images, {len(data['annotations']):,} instances, "
            f"{len(data['categories']):,} categories; gt {gt.stat().st_size / 1e6:.0f} MB; "
            f"{args.images * args.per_image:,} detections: bbox file "
            f"{bbox.stat().st_size / 1e6:.0f} MB"
            + ("" if args.no_segm else f", segm file {segm.stat().st_size / 1e6:.0f} MB")
        )
        del data
        print(f"machine: {os.cpu_count()} CPU cores, no GPU; each figure is one process")

        load = os.getloadavg()[0]
        print(f"load average before: {load:.1f} (other work on the machine slows the wall times)")
        startup = measure([sys.executable, "-c", "import gumbel_analysis.cli.app"])
        print(f"importing the gumbel CLI alone:  {figures(startup)}")
        main_run = measure(command(gt, bbox))
        report = json.loads(main_run["stdout"])
        print(f"gumbel kl-dist, bbox:            {figures(main_run)}")
        print("  target: <= 30 s and <= 3 GB end to end")
        fig = folder / "fig3.png"
        plotted = measure(command(gt, bbox, "--plot", str(fig)))
        print(f"gumbel kl-dist, bbox, --plot:    {figures(plotted)}")
        one = measure(command(gt, bbox, "--workers", "1"))
        print(f"gumbel kl-dist, bbox, 1 process: {figures(one)}")
        if not args.no_segm:
            segm_run = measure(command(gt, segm))
            same = (
                json.loads(segm_run["stdout"])["runs"][0]["kl_mean"] == report["runs"][0]["kl_mean"]
            )
            print(f"gumbel kl-dist, segm:            {figures(segm_run)} (same KL as bbox: {same})")
        run = report["runs"][0]
        print(f"mean KL {run['kl_mean']:.6f} nats, median {run['kl_median']:.6f}, "
              f"dataset {run['dataset_kl']:.6f}")  # fmt: skip
        if not args.no_baseline:
            base = measure([sys.executable, __file__, "--baseline", str(gt), str(bbox)])
            diff = same_numbers(report, json.loads(base["stdout"]))
            print(f"baseline (per-image Python loop), bbox: {figures(base)}")
            print(
                f"ratio baseline / command: wall {base['seconds'] / main_run['seconds']:.2f}x, "
                f"CPU {base['cpu'] / main_run['cpu']:.2f}x, "
                f"memory {base['pss'] / main_run['pss']:.2f}x; "
                f"largest relative difference in the summary: {diff:.1e}"
            )
            if diff > 1e-9:
                raise SystemExit("the command and the baseline disagree")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Why Gumbel's box AP falls below Sigmoid's on the benchmark (issue 21): measurements on the
trained Table 3 runs of a ``gumbel reproduce`` folder.

    python bench/box_ap.py OUT [--configs sigmoid,gumbel,softmax] [--json]

For every run ``OUT/runs/{config}-1x-s{seed}`` with a final model, per configuration (mean over
seeds) and as paired differences against the first configuration (Student t over the shared
seeds, df = n - 1):

* box and mask AP at each IoU threshold 0.50:0.05:0.95, from the run's own ``results.json``
  (one file: boxes and masks are the same detections);
* box AP per frequency group, and detections per image (``metrics.json``);
* the oracle-class regression on the val images (``analysis/box_regression.py``): every RPN
  proposal with IoU >= 0.5 to a ground truth, regressed with that object's own class, so that
  the classifier plays no part: IoU before and after, and the share after at >= 0.75;
* the gradient split on training batches: the norms of the gradients that the classification
  loss and the box-regression loss send into the box head's shared representation.

With ``--decoupled DIR`` (the same configurations and seeds trained with ``--preset
tiny-decoupled`` into ``DIR/runs/{config}-decoupled-1x-s{seed}``, e.g. by ``gumbel train``) it also
prints the causal test: each configuration's difference against the first one with the shared box
head and with separate heads, and the change between the two (the interaction, paired t over the
seeds that all four runs share).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gumbel_analysis.analysis.box_regression import (
    box_fit,
    gradient_split,
    mask_boxes,
    regression_quality,
)
from gumbel_analysis.data import lvis_io
from gumbel_analysis.data.dataset import LVISDetection, collate
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.setup import data_paths, flush_denormals, make_loss
from gumbel_analysis.evaluation import lvis_eval
from gumbel_analysis.evaluation.results import read_results
from gumbel_analysis.experiments import stats
from gumbel_analysis.model import build_model
from gumbel_analysis.spec.config import TrainConfig

RUN = re.compile(r"^(?P<config>.+)-1x-s(?P<seed>\d+)$")


def load_model(run: Path):
    state = ckpt.load_checkpoint(run / "model_final.pt")
    cfg = TrainConfig.from_dict(state["config"])
    train = lvis_io.load_lvis_json(data_paths(cfg.data).train_ann)
    loss = make_loss(cfg, lvis_io.class_frequency(train), lvis_io.frequency_groups(train))
    model = build_model(cfg.preset, loss.num_classes, loss, enh=cfg.enh)
    model.load_state_dict(state["model"])
    return model, cfg


def batches(dataset: LVISDetection, size: int, count: int | None = None):
    n = len(dataset) if count is None else min(len(dataset), count * size)
    for start in range(0, n, size):
        yield collate(
            [dataset[(i, i) if dataset.train else i] for i in range(start, start + size) if i < n]
        )


def measure_run(run: Path, train_batches: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    model, cfg = load_model(run)
    paths = data_paths(cfg.data)
    gt = lvis_eval.load_ground_truth(str(paths.val_ann))
    dets = read_results(run / "results.json")
    out: dict = {"metrics": metrics}
    for iou_type in ("bbox", "segm"):
        precision, _ = lvis_eval.precision_recall(gt, dets, iou_type)
        out[f"{iou_type}_ap_at_iou"] = (100 * lvis_eval.ap_at_iou(precision)).tolist()
    precision, _ = lvis_eval.precision_recall(gt, mask_boxes(dets), "bbox")
    out["mask_box_ap_at_iou"] = (100 * lvis_eval.ap_at_iou(precision)).tolist()
    out["fit"] = box_fit(gt, dets)
    val = LVISDetection(paths.val_ann, paths.image_root, train=False)
    out["val_images"] = len(val)
    train = LVISDetection(paths.train_ann, paths.image_root, train=True, hflip_prob=0.0)
    frequency = {
        int(c["id"]): c["frequency"] for c in lvis_io.load_lvis_json(paths.val_ann)["categories"]
    }
    with flush_denormals():
        quality = regression_quality(model, batches(val, 8))
        out["regression"] = quality.summary(frequency)
        out["gradients"] = gradient_split(model, batches(train, cfg.batch_size or 4, train_batches))
    return out


def flatten(measured: dict) -> dict[str, float]:
    m = measured["metrics"]
    flat = {
        "box AP": m["APb"],
        **{f"box {k}": m[f"bbox/{k}"] for k in ("AP50", "AP75", "APr", "APc", "APf")},
        "mask AP": m["AP"],
        "detections / image": m["num_detections"] / measured["val_images"],
    }
    for key, name in (("bbox", "box"), ("mask_box", "box of the mask"), ("segm", "mask")):
        for t, ap in zip(lvis_eval.IOU_THRESHOLDS, measured[f"{key}_ap_at_iou"], strict=True):
            flat[f"{name} AP@{t:.2f}"] = ap
        flat[f"{name} AP"] = float(np.mean(measured[f"{key}_ap_at_iou"]))
    fit = measured["fit"]
    flat.update({f"score>=0.3, {k}": v for k, v in fit.items()})
    r = measured["regression"]
    flat.update(
        {
            "proposals matched (IoU>=0.5)": r["proposals"],
            "proposal IoU (RPN)": r["iou_before"],
            "IoU after own-class regression": r["iou_after"],
            "share after >= 0.75": r["after_ge_0.75"],
            "share after >= 0.9": r["after_ge_0.9"],
            "top class right": r["top_class_right"],
            "score-IoU rank correlation": r["score_iou_spearman"],
            "per object: IoU of the top-scored proposal": r["top_scored_iou"],
            "per object: IoU of the best-placed proposal": r["best_iou"],
            **{f"IoU after, {g}": r[f"iou_after_{g}"] for g in "rcf" if f"iou_after_{g}" in r},
        }
    )
    g = measured["gradients"]
    flat.update(
        {
            "|grad| from classifier": g["classifier"],
            "|grad| from box regression": g["box_reg"],
            "classifier / regression": g["ratio"],
            "cosine of the two": g["cosine"],
        }
    )
    return flat


INTERACTION_METRICS = {
    "box AP": "APb",
    "box AP50": "bbox/AP50",
    "box AP75": "bbox/AP75",
    "box APr": "bbox/APr",
    "mask AP": "AP",
    "mask AP75": "AP75",
    "mask APr": "APr",
}


def find_runs(out: Path, config: str, needs: str) -> dict[int, Path]:
    """Seed -> folder of each run ``out/runs/{config}-1x-s{seed}`` holding the file ``needs``."""
    found = {}
    for path in sorted((out / "runs").glob(f"{config}-1x-s*")):
        match = RUN.match(path.name)
        if match and match["config"] == config and (path / needs).is_file():
            found[int(match["seed"])] = path
    return found


def run_metrics(out: Path, config: str) -> dict[int, dict]:
    runs = find_runs(out, config, "metrics.json")
    return {seed: json.loads((path / "metrics.json").read_text()) for seed, path in runs.items()}


def interaction(shared: Path, decoupled: Path, configs: list[str]) -> tuple[Table, dict]:
    """(config - base) with separate box heads minus (config - base) with the shared head."""
    base = configs[0]
    table = Table(title=f"Shared box head ({shared}) against separate heads ({decoupled})")
    table.add_column("measure")
    report: dict = {}
    cells: dict[str, list[str]] = {name: [name] for name in INTERACTION_METRICS}
    for config in configs[1:]:
        here = {c: run_metrics(shared, c) for c in (base, config)}
        there = {c: run_metrics(decoupled, f"{c}-decoupled") for c in (base, config)}
        seeds = sorted(set.intersection(*(set(v) for v in (*here.values(), *there.values()))))
        if not seeds:  # no separate-head runs of this configuration
            continue
        for title in ("shared", "separate", "interaction"):
            table.add_column(f"Δ {config} {title} (n={len(seeds)})", justify="right")
        for name, key in INTERACTION_METRICS.items():
            d_shared = [here[config][s][key] - here[base][s][key] for s in seeds]
            d_separate = [there[config][s][key] - there[base][s][key] for s in seeds]
            change = [b - a for a, b in zip(d_shared, d_separate, strict=True)]
            tested = [
                stats.paired(d) if len(seeds) >= 2 else None for d in (d_shared, d_separate, change)
            ]
            report.setdefault(config, {})[name] = [
                None if d is None else d.as_dict() for d in tested
            ]
            cells[name] += ["" if d is None else format_delta(d) for d in tested]
    for row in cells.values():
        table.add_row(*row)
    return table, report


def format_delta(d: stats.Delta) -> str:
    if d.p is None:
        return f"{d.delta:+.3f}"
    t = f"{d.t:.2f}" if d.t is not None else ("inf" if d.delta else "undefined")
    return f"{d.delta:+.3f} ({t}, {d.df:g}, {d.p:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--configs", default="sigmoid,gumbel,softmax")
    parser.add_argument("--train-batches", type=int, default=25)
    parser.add_argument(
        "--cache", type=Path, help="keep each run's measurements in DIR/NAME.json and reuse them"
    )
    parser.add_argument(
        "--decoupled",
        type=Path,
        help="a folder of the same runs with --preset tiny-decoupled: print the interaction",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for folder in (args.out, args.decoupled):
        if folder is not None and not (folder / "runs").is_dir():
            parser.error(f"{folder}: no runs/ folder (a gumbel reproduce OUT)")
    if args.train_batches < 1:
        parser.error(f"--train-batches: at least 1, got {args.train_batches}")
    configs = [c for c in args.configs.split(",") if c]
    if not configs:
        parser.error("--configs: name at least one configuration")
    runs = {config: find_runs(args.out, config, "model_final.pt") for config in configs}
    if not runs[configs[0]]:
        parser.error(f"--configs: no finished run {args.out}/runs/{configs[0]}-1x-sSEED")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    values: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for config in configs:
        for seed, path in sorted(runs[config].items()):
            cached = args.cache / f"{path.name}.json" if args.cache else None
            if cached is not None and cached.is_file():
                measured = json.loads(cached.read_text())
            else:
                measured = measure_run(path, args.train_batches)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    partial = cached.with_name(cached.name + ".partial")
                    partial.write_text(json.dumps(measured))
                    partial.replace(cached)  # a killed run leaves no half-written cache entry
            values[config][seed] = flatten(measured)
    base = configs[0]
    keys = list(next(iter(values[base].values())))
    report: dict = {"runs": {c: {str(s): v for s, v in vs.items()} for c, vs in values.items()}}
    table = Table(title=f"Box AP diagnosis ({args.out}); Δ paired over seeds against {base}")
    table.add_column("measure")
    for config in configs:
        table.add_column(f"{config} (n={len(values[config])})", justify="right")
    for config in configs[1:]:
        table.add_column(f"Δ {config} (t, df, p)", justify="right")
    report["differences"] = {}
    for key in keys:
        row = [key]
        for config in configs:
            xs = [v[key] for v in values[config].values()]
            row.append(f"{np.mean(xs):.3f}" if xs else "")
        for config in configs[1:]:
            a = {s: v[key] for s, v in values[config].items()}
            b = {s: v[key] for s, v in values[base].items()}
            d = stats.difference(a, b)
            report["differences"].setdefault(config, {})[key] = None if d is None else d.as_dict()
            if d is None:
                row.append("")
            else:
                row.append(format_delta(d))
        table.add_row(*row)
    tables = [table]
    if args.decoupled is not None:
        extra, report["interaction"] = interaction(args.out, args.decoupled, configs)
        tables.append(extra)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for each in tables:
            Console(width=150).print(each)


if __name__ == "__main__":
    main()

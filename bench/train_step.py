"""Time per training iteration of the ``tiny`` preset with each loss, as a ratio to Softmax.

Same batches (4 synthetic 128 px images), same initial weights, the losses taking turns
iteration by iteration: ``python bench/train_step.py [--rounds 20] [--json]``;
``--losses softmax,loce,loce+mfs`` times LOCE's feature memory (MFS) against the loss alone;
``--compare-presets cascade-tiny,htc-tiny`` times other presets on the same batches.
On a GPU, ``--device cuda --preset r50-fpn --amp`` also gives images per second with mixed
precision.

With ``--preset r50-fpn`` a reference takes its turn on the same batches: torchvision's own
``maskrcnn_resnet50_fpn`` (random weights, the same classes, 800/1333 px, 512 RoIs), so that
the ratio says what this toolkit's Mask R-CNN costs over the library's.
"""

from __future__ import annotations

import argparse
import json

import torch
from _training import interleaved, model_for, synthetic_batches, timed_step
from rich.console import Console
from rich.table import Table

LOSSES = ("softmax", "sigmoid", "gumbel", "gol", "gol-star")
REFERENCE = "torchvision"


def torchvision_reference(num_classes: int, device: torch.device, seed: int = 0):
    """torchvision's Mask R-CNN R50-FPN as the library ships it (its Softmax loss)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument(
        "--losses", default=",".join(LOSSES), help="comma-separated; softmax is the base"
    )
    parser.add_argument(
        "--compare-presets",
        default="",
        help="comma-separated presets timed on the same batches, each loss as LOSS@PRESET "
        "(e.g. cascade-tiny,htc-tiny against --preset tiny)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = [n for n in args.losses.split(",") if n]
    if "softmax" not in names:
        parser.error("--losses must include softmax (the base of the ratios)")
    dataset, batches = synthetic_batches(8, args.batch_size, device)
    cases = {}
    models = {name: model_for(name, dataset, args.preset, device)[::2] for name in names}
    for preset in [p for p in args.compare_presets.split(",") if p]:
        for name in names:
            models[f"{name}@{preset}"] = model_for(name, dataset, preset, device)[::2]
    if args.preset == "r50-fpn":
        classes = models["softmax"][0].roi_heads.box_predictor.cls_score.out_features
        models[REFERENCE] = torchvision_reference(classes, device)
    for name, (model, optimizer) in models.items():

        def step(r, model=model, optimizer=optimizer):
            return timed_step(model, optimizer, batches[r % len(batches)], device, args.amp)

        cases[name] = step
    seconds = interleaved(cases, args.rounds, args.warmup)
    base = seconds["softmax"]
    report = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "amp": args.amp,
        "seconds_per_iter": seconds,
        "ratio_to_softmax": {k: v / base for k, v in seconds.items()},
        "images_per_second": {k: args.batch_size / v for k, v in seconds.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(
        title=f"{args.preset} training iteration, batch {args.batch_size}, "
        f"{report['device']} ({report['threads']} threads){', AMP' if args.amp else ''}"
    )
    for col in ("loss (torchvision: the library's model)", "s / iter", "images / s", "ratio"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for name in seconds:
        table.add_row(
            name,
            f"{seconds[name]:.3f}",
            f"{report['images_per_second'][name]:.1f}",
            f"{report['ratio_to_softmax'][name]:.3f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()

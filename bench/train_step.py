"""Time per training iteration of the ``tiny`` preset with each loss, as a ratio to Softmax.

Same batches (4 synthetic 128 px images), same initial weights, the losses taking turns
iteration by iteration: ``python bench/train_step.py [--rounds 20] [--json]``. On a GPU,
``--device cuda --preset r50-fpn --amp`` also gives images per second with mixed precision.
"""

from __future__ import annotations

import argparse
import json

import torch
from _training import interleaved, model_for, synthetic_batches, timed_step
from rich.console import Console
from rich.table import Table

LOSSES = ("softmax", "sigmoid", "gumbel", "gol", "gol-star")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset, batches = synthetic_batches(8, args.batch_size, device)
    cases = {}
    for name in LOSSES:
        model, _, optimizer = model_for(name, dataset, args.preset, device)

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
    for col in ("loss", "s / iter", "images / s", "ratio to softmax"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for name in LOSSES:
        table.add_row(
            name,
            f"{seconds[name]:.3f}",
            f"{report['images_per_second'][name]:.1f}",
            f"{report['ratio_to_softmax'][name]:.3f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()

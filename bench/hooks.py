"""Training-iteration time with gradient recording on vs off, in one run.

The recorder is the one ``gumbel train`` uses (a tensor hook on the box logits, device-side
sums, a row to HDF5 every ``--every`` iterations). Same batches and weights, the two cases
taking turns: ``python bench/hooks.py [--loss gumbel] [--rounds 30] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from _training import interleaved, model_for, synthetic_batches, timed_step
from rich.console import Console

from gumbel_analysis.engine.train import build_grad_log_writer
from gumbel_analysis.hooks.gradient_recorder import GradientRecorderHook
from gumbel_analysis.spec.config import TrainConfig
from gumbel_analysis.spec.layout import RunLayout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--loss", default="gumbel")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--every", type=int, default=10, help="iterations per HDF5 row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset, batches = synthetic_batches(8, args.batch_size, device)
    off_model, _, off_opt = model_for(args.loss, dataset, args.preset, device)
    on_model, loss, on_opt = model_for(args.loss, dataset, args.preset, device)
    tmp = Path(tempfile.mkdtemp())
    recorder = GradientRecorderHook(
        loss.num_classes, every=args.every, weights_fn=lambda: getattr(loss, "last_weights", None)
    )
    recorder.writer = build_grad_log_writer(
        RunLayout(tmp), TrainConfig(loss=args.loss), loss, dataset, None
    )
    recorder.trainer = SimpleNamespace(iteration=0, epoch=0, epoch_iteration=1)
    on_model.roi_heads.register_class_logits_hook(recorder.watch)

    def off(r):
        return timed_step(off_model, off_opt, batches[r % len(batches)], device)

    def on(r):
        t = timed_step(on_model, on_opt, batches[r % len(batches)], device)
        recorder.trainer.iteration = r + 1
        t0 = time.perf_counter()
        recorder.after_step()  # writing the row is part of the cost
        if device.type == "cuda":
            torch.cuda.synchronize()
        return t + time.perf_counter() - t0

    seconds = interleaved({"off": off, "on": on}, args.rounds, args.warmup)
    rows = recorder.writer.rows
    recorder.writer.close()
    overhead = seconds["on"] / seconds["off"] - 1
    report = {
        "preset": args.preset,
        "loss": args.loss,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds_per_iter": seconds,
        "ratio_on_to_off": seconds["on"] / seconds["off"],
        "overhead": overhead,
        "rows_written": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    Console().print(
        f"{args.preset} / {args.loss} on {device} ({report['threads']} threads): "
        f"recording off {seconds['off']:.4f} s/iter, on {seconds['on']:.4f} s/iter, "
        f"ratio {report['ratio_on_to_off']:.4f} (overhead {overhead:+.2%}, target <= +1%)"
    )


if __name__ == "__main__":
    main()

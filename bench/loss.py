"""Forward + backward time of the classification losses on an LVIS-sized batch.

Baseline (ratio 1.00): ``binary_cross_entropy_with_logits`` with its one-hot target built from the
labels, as a Sigmoid head does each iteration. Every case runs in the same process on the same
logits: ``python bench/loss.py [--device cuda] [--rows 8192 --classes 1204] [--json]``.

On CUDA it also reports the achieved memory bandwidth of Gumbel ``stable`` (the minimum traffic:
read the logits, write their gradient, 8 bytes per element in float32) against the card's
copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from gumbel_analysis.losses import build_loss, gumbel_bce


def reference_recipe(logits, labels):
    p = torch.exp(-torch.exp(-torch.clamp(logits, min=-4, max=10)))
    target = F.one_hot(labels, logits.shape[1]).float()
    loss = F.binary_cross_entropy(p, target, reduction="none").sum() / logits.shape[0]
    return torch.clamp(loss, 0, 20)


def bce_built(logits, labels):
    target = F.one_hot(labels, logits.shape[1]).float()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


#: The long-tail methods timed with each activation; each is compared with plain BCE of the
#: same activation (Seesaw with softmax cross-entropy).
METHODS = ("eql", "droploss", "acsl", "federated", "eqlv2", "loce", "disalign")


def cases(rows: int, classes: int, device: torch.device, labels: torch.Tensor):
    """name -> (loss of the [rows, classes + 1] logits, the name of its plain counterpart)."""
    c = classes - 1  # foreground classes; label c is the background
    freq = torch.logspace(-5, -1, c, dtype=torch.float64)
    groups = ["r" if f < 1e-4 else "c" if f < 1e-3 else "f" for f in freq.tolist()]
    prebuilt = F.one_hot(labels, classes).float()
    gol = build_loss("gol", c, class_frequency=freq).to(device)
    out = {
        "bce-with-logits, target built (baseline)": (
            lambda q: bce_built(q[:, :classes], labels),
            "",
        ),
        "bce-with-logits, target prebuilt": (
            lambda q: (
                F.binary_cross_entropy_with_logits(q[:, :classes], prebuilt, reduction="sum") / rows
            ),
            "",
        ),
        "reference recipe (clamp, exp(-exp), BCE)": (
            lambda q: reference_recipe(q[:, :classes], labels),
            "",
        ),
        "gumbel stable": (lambda q: gumbel_bce(q[:, :classes], labels), ""),
        "gumbel none": (lambda q: gumbel_bce(q[:, :classes], labels, mode="none"), ""),
        "gumbel paper": (lambda q: gumbel_bce(q[:, :classes], labels, mode="paper"), ""),
        "gol (stable)": (lambda q: gol(q[:, :c], labels), "bce / gumbel"),
        "softmax cross-entropy": (lambda q: F.cross_entropy(q[:, :classes], labels), ""),
    }
    for activation in ("sigmoid", "gumbel"):
        for method in ("bce", *METHODS):
            loss = build_loss(method, c, freq, groups, activation=activation).to(device).train()
            plain = "" if method == "bce" else f"bce / {activation}"
            out[f"{method} / {activation}"] = (_sliced(loss, labels), plain)
    seesaw = build_loss("seesaw", c).to(device).train()
    out["seesaw / softmax"] = (_sliced(seesaw, labels), "softmax cross-entropy")
    loce = build_loss("loce", c).to(device).train()
    out["loce / softmax"] = (_sliced(loce, labels), "softmax cross-entropy")
    disalign = build_loss("disalign", c, freq).to(device).train()
    out["disalign / softmax"] = (_sliced(disalign, labels), "softmax cross-entropy")
    return out


def _sliced(loss, labels):
    """The loss on its own columns of the shared logits."""
    return lambda q: loss(q[:, : loss.num_outputs], labels)


def time_case(fn, logits, repeats: int, device: torch.device) -> float:
    def once() -> float:
        x = logits.detach().requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(2):
        once()
    return statistics.median(once() for _ in range(repeats))


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = 20
    for _ in range(n):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192, help="proposals N (LVIS: 16 x 512)")
    parser.add_argument("--classes", type=int, default=1204, help="columns C + 1 (LVIS: 1204)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    # Logits spread like a classifier's in training (mostly confident negatives).
    # One spare column: Seesaw has two objectness logits (C + 2 outputs).
    logits = (torch.randn(args.rows, args.classes + 1, generator=gen) * 2 - 2).to(device)
    # Labels as in a detector's sampled proposals: 25% foreground (LVIS's 1:3), the rest
    # background (label C).
    labels = torch.randint(0, args.classes - 1, (args.rows,), generator=gen)
    labels[torch.rand(args.rows, generator=gen) > 0.25] = args.classes - 1
    labels = labels.to(device)
    results = {}
    plain_of = {}
    for name, (fn, plain) in cases(args.rows, args.classes, device, labels).items():
        plain_of[name] = plain
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = time_case(fn, logits, args.repeats, device)
        entry = {"ms": seconds * 1e3}
        if device.type == "cuda":
            entry["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        results[name] = entry
    base = next(iter(results.values()))["ms"]
    for name, entry in results.items():
        entry["ratio"] = entry["ms"] / base
        if plain_of[name]:
            entry["ratio_to_plain"] = entry["ms"] / results[plain_of[name]]["ms"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "shape": [args.rows, args.classes],
        "results": results,
    }
    if device.type == "cuda":
        peak = copy_bandwidth(device)
        stable_s = results["gumbel stable"]["ms"] / 1e3
        achieved = 8 * args.rows * args.classes / stable_s
        report["bandwidth"] = {
            "copy_gb_s": peak / 1e9,
            "gumbel_stable_min_traffic_gb_s": achieved / 1e9,
            "fraction_of_copy": achieved / peak,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(
        title=f"Loss forward + backward, {args.rows} x {args.classes} float32 on {report['device']}"
        f" ({report['threads']} threads)"
    )
    table.add_column("loss")
    table.add_column("ms", justify="right")
    table.add_column("ratio to BCE-with-logits", justify="right")
    table.add_column("ratio to its plain loss", justify="right")
    if device.type == "cuda":
        table.add_column("peak MiB", justify="right")
    for name, entry in results.items():
        plain = f"{entry['ratio_to_plain']:.2f}x" if "ratio_to_plain" in entry else ""
        row = [name, f"{entry['ms']:.1f}", f"{entry['ratio']:.2f}x", plain]
        if device.type == "cuda":
            row.append(f"{entry['peak_mem_mib']:.0f}")
        table.add_row(*row)
    console = Console()
    console.print(table)
    if "bandwidth" in report:
        bw = report["bandwidth"]
        console.print(
            f"Gumbel stable moves >= 8 B/element: {bw['gumbel_stable_min_traffic_gb_s']:.0f} GB/s"
            f" = {bw['fraction_of_copy']:.0%} of this card's copy bandwidth"
            f" ({bw['copy_gb_s']:.0f} GB/s)"
        )


if __name__ == "__main__":
    main()

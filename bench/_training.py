"""Shared by the training benchmarks: fixed batches, models per loss, one timed SGD step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from gumbel_analysis.data.dataset import LVISDetection, collate
from gumbel_analysis.data.synthetic import SyntheticSpec, default_cache_root, ensure_synthetic
from gumbel_analysis.engine.setup import data_paths, make_loss
from gumbel_analysis.model import build_model
from gumbel_analysis.spec.config import TrainConfig


def synthetic_batches(count: int, batch_size: int, device: torch.device):
    """``count`` fixed training batches of the embedded synthetic dataset."""
    root = ensure_synthetic(default_cache_root(), SyntheticSpec())
    paths = data_paths(str(root))
    dataset = LVISDetection(paths.train_ann, paths.image_root, train=True, hflip_prob=0.0)
    batches = []
    for b in range(count):
        images, targets = collate(
            [dataset[(b * batch_size + i) % len(dataset)] for i in range(batch_size)]
        )
        batches.append(
            (
                [im.to(device) for im in images],
                [
                    {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                    for t in targets
                ],
            )
        )
    return dataset, batches


#: Benchmark names of a loss with options: LOCE with its memory-augmented feature sampling.
VARIANTS = {"loce+mfs": ("loce", {"loce_mfs": True})}


def model_for(loss_name: str, dataset, preset: str, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    loss_name, options = VARIANTS.get(loss_name, (loss_name, {}))
    loss = make_loss(
        TrainConfig(loss=loss_name, preset=preset, loss_options=options),
        dataset.class_frequency,
        dataset.frequency_groups,
    )
    model = build_model(preset, loss.num_classes, loss).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    return model, loss, optimizer


def timed_step(model, optimizer, batch, device: torch.device, amp: bool = False) -> float:
    images, targets = batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, enabled=amp):
        losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[int], float]], rounds: int, warmup: int) -> dict:
    """Median seconds per call of each case, the cases taking turns so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(warmup + rounds):
        for name, step in cases.items():
            t = step(r)
            if r >= warmup:
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}

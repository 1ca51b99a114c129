"""Run a detector over a dataset and evaluate its detections (lvis-api's numbers)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from gumbel_analysis.data import lvis_io
from gumbel_analysis.data.dataset import LVISDetection
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.config import TrainConfig
from gumbel_analysis.engine.evaluate import detections_to_results, evaluate_results, write_results
from gumbel_analysis.engine.setup import RunPaths, data_paths, make_loss, pick_device
from gumbel_analysis.errors import InputError
from gumbel_analysis.io import check_writable_folder, write_text_atomic
from gumbel_analysis.model import build_model


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    dataset,
    device: torch.device,
    batch_size: int = 4,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> list[dict]:
    """LVIS results (bbox and segm) of ``model`` on ``dataset`` (an LVISDetection)."""
    model.eval()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    results: list[dict] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluate", total=len(indices))
        for start in range(0, len(indices), batch_size):
            batch = [dataset[i] for i in indices[start : start + batch_size]]
            images = [img.to(device) for img, _ in batch]
            outputs = model(images)
            outputs = [{k: v.cpu() for k, v in out.items()} for out in outputs]
            image_ids = [int(target["image_id"]) for _, target in batch]
            results += detections_to_results(outputs, image_ids, dataset.category_ids)
            bar.advance(task, len(batch))
    return results


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    device: torch.device,
    batch_size: int = 4,
    progress: bool = True,
    **evaluate_options: Any,
) -> tuple[dict, list[dict]]:
    """Metrics (AP, APr, APc, APf, APb, ...) and the results they were computed from.

    ``evaluate_options`` go to :func:`evaluate_results` (``iou_types``, ``evaluator``,
    ``max_dets``)."""
    results = predict(model, dataset, device, batch_size, progress=progress)
    metrics = evaluate_results(Path(dataset.ann_file), results, **evaluate_options)
    return metrics, results


def evaluate_run(
    model: torch.nn.Module,
    val_set,
    device: torch.device,
    run: RunPaths,
    cfg: TrainConfig,
    progress: bool = True,
    outputs: OutputPaths | None = None,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """Evaluate on the val set and write the results and metrics atomically (``outputs``;
    default the run's ``results.json`` and ``metrics.json``)."""
    outputs = outputs or OutputPaths(run.results, run.metrics)
    metrics, results = evaluate_model(
        model, val_set, device, cfg.batch_size, progress, **evaluate_options
    )
    write_results(outputs.results, results)
    metrics = {"loss": cfg.loss, "preset": cfg.preset, "data": cfg.data, **metrics}
    write_text_atomic(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    return metrics


@dataclass(frozen=True)
class OutputPaths:
    """Where an evaluation writes its results and metrics."""

    results: Path
    metrics: Path


def output_paths(run: RunPaths, own_data: str, data: str | None, out: Path | None) -> OutputPaths:
    """``out/results.json`` and ``out/metrics.json`` when ``out`` is given; else the run's own
    files when the data is the run's own, else ``results.<data>.json`` / ``metrics.<data>.json``
    beside them (``<data>`` the data folder's name), so a run's own files are never replaced."""
    if out is not None:
        return OutputPaths(Path(out) / "results.json", Path(out) / "metrics.json")
    if data is None or Path(data).resolve() == Path(own_data).resolve():
        return OutputPaths(run.results, run.metrics)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).resolve().name) or "data"
    return OutputPaths(run.root / f"results.{name}.json", run.root / f"metrics.{name}.json")


def evaluate_checkpoint(
    source: str | Path,
    *,
    data: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    **evaluate_options: Any,
) -> tuple[dict[str, Any], OutputPaths]:
    """``gumbel eval``: a run folder (its ``model_final.pt``, else ``last.pt``) or a checkpoint
    file, evaluated on its data's val set (or ``data``); writes results and metrics beside it
    (see :func:`output_paths`), after checking, before inference, that it can."""
    source = Path(source)
    if source.is_dir():
        run = RunPaths(source)
        path = run.final if run.final.is_file() else run.last
        if not path.is_file():
            raise InputError(f"no checkpoint in {source} (expected {ckpt.FINAL} or {ckpt.LAST})")
    else:
        path, run = source, RunPaths(source.parent)
    state = ckpt.load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise InputError(f"{path} holds no model and configuration")
    cfg = TrainConfig.from_dict(state["config"])
    outputs = output_paths(run, cfg.data, data, Path(out) if out is not None else None)
    check_writable_folder(outputs.results.parent)
    if data is not None:
        cfg.data = data
    if batch_size is not None:
        cfg.batch_size = batch_size
    paths = data_paths(cfg.data)
    # The loss needs only the training classes' frequencies: no training images are touched.
    train_data = lvis_io.load_lvis_json(paths.train_ann)
    val_set = LVISDetection(paths.val_ann, paths.image_root, train=False)
    loss = make_loss(cfg, lvis_io.class_frequency(train_data), lvis_io.frequency_groups(train_data))
    model = build_model(cfg.preset, loss.num_classes, loss, enh=cfg.enh)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise InputError(
            f"{path} does not fit the model of its configuration (different classes or preset?)"
        ) from None
    dev = pick_device(device)
    model.to(dev)
    metrics = evaluate_run(model, val_set, dev, run, cfg, progress, outputs, **evaluate_options)
    return metrics, outputs

"""Run a detector over a dataset and evaluate its detections (lvis-api's numbers).

Inference at scale: the images are cut into batches of ``batch_size`` in dataset order, and
rank ``r`` of ``W`` predicts batches ``r, r + W, ...`` through a DataLoader with workers that
reads the images alone (no target, no mask decoding). Each rank writes its part of the results,
one JSON line per image (that image's entries), atomically; rank 0 then streams the parts into
one results file in dataset order, removes the parts and evaluates the file. The batches are the
ones a single process forms, so the results file is the one a single process writes, byte for
byte (up to the kernels' own determinism), and so are the metrics. No rank ever holds another
rank's detections, nor rank 0 the whole results list: the evaluator reads the file in pieces.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from gumbel_analysis.data import lvis_io
from gumbel_analysis.data.dataset import LVISDetection
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.engine.distributed import DistInfo, cleanup, init_distributed
from gumbel_analysis.engine.evaluate import detections_to_results, evaluate_results
from gumbel_analysis.engine.setup import (
    autocast_dtype,
    data_paths,
    flush_denormals,
    make_calibration,
    make_loss,
    mixed_precision_available,
    pick_device,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.io import (
    atomic_path,
    check_writable_folder,
    remove_leftovers,
    write_text_atomic,
)
from gumbel_analysis.model import build_model
from gumbel_analysis.model.calibration import calibration_tag, score_calibration
from gumbel_analysis.spec.config import (
    TrainConfig,
    check_calibration,
    check_fields,
    recipe_values,
)
from gumbel_analysis.spec.layout import RunLayout
from gumbel_analysis.spec.presets import Recipe


class _Images(Dataset):
    """The images of an :class:`LVISDetection` and their ids, without targets."""

    def __init__(self, dataset: LVISDetection) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset.image(i)


def _collate_images(batch: list[tuple[torch.Tensor, int]]) -> tuple[list, list[int]]:
    return [image for image, _ in batch], [image_id for _, image_id in batch]


def shard_batches(
    num_images: int, batch_size: int, world_size: int = 1, rank: int = 0
) -> list[list[int]]:
    """Rank ``rank``'s batches: dataset order cut into ``batch_size`` images (the last may be
    shorter), every ``world_size``-th from batch ``rank`` on. Every image once, in no padding."""
    batches = [
        list(range(start, min(start + batch_size, num_images)))
        for start in range(0, num_images, batch_size)
    ]
    return batches[rank::world_size]


@contextlib.contextmanager
def prediction_limits(
    model: torch.nn.Module, score_threshold: float, max_dets: int
) -> Iterator[None]:
    """The model's RoI heads keep scores ``> score_threshold``, at most ``max_dets`` per image."""
    heads = model.roi_heads
    saved = heads.score_thresh, heads.detections_per_img
    heads.score_thresh, heads.detections_per_img = float(score_threshold), int(max_dets)
    try:
        yield
    finally:
        heads.score_thresh, heads.detections_per_img = saved


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module,
    dataset: LVISDetection,
    device: torch.device,
    batches: Sequence[Sequence[int]],
    *,
    workers: int = 0,
    progress: bool = True,
    amp: bool = False,
) -> Iterator[list[list[dict]]]:
    """For each batch, the LVIS result entries of each of its images (a list per image); with
    ``amp`` under autocast (:func:`autocast_dtype`; boxes, scores and masks stay float32)."""
    model.eval()
    loader = DataLoader(
        _Images(dataset),
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        collate_fn=_collate_images,
        pin_memory=device.type == "cuda",
    )
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("predict", total=sum(len(b) for b in batches))
        for images, image_ids in loader:
            with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
                outputs = model([img.to(device, non_blocking=True) for img in images])
            outputs = [{k: v.cpu() for k, v in out.items()} for out in outputs]
            yield [
                detections_to_results([out], [image_id], dataset.category_ids)
                for out, image_id in zip(outputs, image_ids, strict=True)
            ]
            bar.advance(task, len(images))


def predict(
    model: torch.nn.Module,
    dataset: LVISDetection,
    device: torch.device,
    batch_size: int = 4,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    *,
    workers: int = 0,
) -> list[dict]:
    """LVIS results (bbox and segm) of ``model`` on ``dataset`` (an LVISDetection), in memory.

    ``indices``: the images (dataset indices) to predict, in batches of ``batch_size``."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    results: list[dict] = []
    for per_image in predict_batches(
        model, dataset, device, batches, workers=workers, progress=progress
    ):
        for entries in per_image:
            results += entries
    return results


def part_path(results: Path, rank: int) -> Path:
    """Rank ``rank``'s part of ``results``: ``results.rankK.part.jsonl`` beside it."""
    return RunLayout.results_part(results, rank)


def write_part(path: Path, per_batch: Iterator[list[list[dict]]]) -> int:
    """One line per image, the JSON list of its entries (as :func:`write_results` writes them);
    atomically. Returns the number of detections."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for per_image in per_batch:
            for entries in per_image:
                f.write(json.dumps(entries, separators=(",", ":")))
                f.write("\n")
                count += len(entries)
    return count


def remove_own_leftovers(results: Path) -> list[Path]:
    """What a killed evaluation writing ``results`` left beside it, and nothing else: the ranks'
    parts (``results.rankK.part.jsonl``, any K) and the temporary files of the atomic writes of
    the parts and of ``results`` (``.results.rankK.part.jsonl.XXXXXXXX.tmp.jsonl``, ...)."""
    results = Path(results)
    if not results.parent.is_dir():
        return []
    rank_of = re.compile(rf"\.?{re.escape(results.stem)}\.rank(\d+)\.part\.jsonl(\..+)?")
    ranks = sorted(
        {int(m.group(1)) for c in results.parent.iterdir() if (m := rank_of.fullmatch(c.name))}
    )
    removed = remove_leftovers(results)
    for rank in ranks:
        part = part_path(results, rank)
        removed += remove_leftovers(part)
        if part.is_file() and not part.is_symlink():
            part.unlink()
            removed.append(part)
    return removed


def merge_parts(
    results: Path, num_images: int, batch_size: int, world_size: int, remove: bool = True
) -> None:
    """Stream the ranks' parts (see :func:`shard_batches`) into the results JSON list, in
    dataset order, atomically; the same bytes as :func:`write_results` of all the entries.
    The parts are removed afterwards (also when the merge fails)."""
    parts = [part_path(results, r) for r in range(world_size)]
    try:
        files = [p.open() for p in parts]
        try:
            with atomic_path(results) as tmp, tmp.open("w") as out:
                out.write("[")
                first = True
                for b, batch in enumerate(shard_batches(num_images, batch_size)):
                    part = files[b % world_size]
                    for _ in batch:
                        line = part.readline().rstrip("\n")
                        if not (line.startswith("[") and line.endswith("]")):
                            raise InputError(f"{parts[b % world_size]} is incomplete")
                        inner = line[1:-1]
                        if inner:
                            out.write(inner if first else "," + inner)
                            first = False
                out.write("]")
                for path, part in zip(parts, files, strict=True):
                    if part.readline():
                        raise InputError(f"{path} has more images than its share")
        finally:
            for part in files:
                part.close()
    finally:
        if remove:
            for path in parts:
                path.unlink(missing_ok=True)


def _agree(ok: bool, dist: DistInfo) -> bool:
    """True when every rank is ok (each rank tells the others; no rank waits forever)."""
    if not dist.enabled:
        return ok
    import torch.distributed as tdist

    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    if tdist.get_backend() == "nccl":
        flag = flag.cuda()
    tdist.all_reduce(flag)
    return int(flag.item()) == 0


def _same_model_everywhere(model: torch.nn.Module, dist: DistInfo) -> None:
    """Rank 0's parameters and buffers on every rank: after DDP training each rank's BatchNorm
    statistics saw its own last batch, and every rank must predict with the model rank 0 saves."""
    if not dist.enabled:
        return
    import torch.distributed as tdist

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tdist.broadcast(tensor.data, src=0)


def predict_and_evaluate(
    model: torch.nn.Module,
    dataset: LVISDetection,
    device: torch.device,
    results: Path,
    *,
    batch_size: int,
    workers: int = 0,
    score_threshold: float = Recipe.score_threshold,
    max_dets: int = Recipe.max_dets,
    dist: DistInfo | None = None,
    progress: bool = True,
    amp: bool = False,
    **evaluate_options: Any,
) -> dict[str, Any] | None:
    """Predict ``dataset`` (this rank's share), write ``results`` (rank 0 merges the parts) and
    evaluate it; the metrics on rank 0, None on the others. ``amp``: predict under autocast.

    ``evaluate_options`` go to :func:`evaluate_results` (``iou_types``, ``evaluator``); it keeps
    ``max_dets`` per image, as the model does."""
    dist = dist or DistInfo()
    check_fields(
        batch_size=batch_size, score_threshold=score_threshold, max_dets=max_dets, workers=workers
    )
    results = Path(results)
    if dist.is_main:  # a killed evaluation's parts and temporary files, before any rank writes
        remove_own_leftovers(results)
    _agree(True, dist)
    _same_model_everywhere(model, dist)
    batches = shard_batches(len(dataset), batch_size, dist.world_size, dist.rank)
    part = part_path(results, dist.rank)
    error: BaseException | None = None
    try:
        with flush_denormals(), prediction_limits(model, score_threshold, max_dets):
            write_part(
                part,
                predict_batches(
                    model, dataset, device, batches, workers=workers, progress=progress, amp=amp
                ),
            )
    except Exception as err:  # told to the other ranks before it is raised
        error = err
    if not _agree(error is None, dist):
        part.unlink(missing_ok=True)
        if error is not None:
            raise error
        raise InputError("prediction failed in another process (see its message)")
    if not dist.is_main:
        return None
    merge_parts(results, len(dataset), batch_size, dist.world_size)
    return evaluate_results(Path(dataset.ann_file), results, max_dets=max_dets, **evaluate_options)


def evaluate_run(
    model: torch.nn.Module,
    val_set: LVISDetection,
    device: torch.device,
    run: RunLayout,
    cfg: TrainConfig,
    progress: bool = True,
    outputs: OutputPaths | None = None,
    dist: DistInfo | None = None,
    calibration: torch.nn.Module | None = None,
    **evaluate_options: Any,
) -> dict[str, Any] | None:
    """Evaluate on the val set with the config's batch size, workers, score threshold and
    detections per image (the preset's where the config has none); write the results and
    metrics atomically (``outputs``; default the run's ``results.json`` and ``metrics.json``).
    ``calibration``: score the detections through it (``model.calibration.NorCal``).
    Every rank of ``dist`` predicts its share; rank 0 gets the metrics, the others None."""
    dist = dist or DistInfo()
    outputs = outputs or OutputPaths(run.results, run.metrics)
    settings = prediction_settings(cfg)
    if dist.is_main:
        remove_leftovers(outputs.metrics)  # a killed write's temporary file
    with score_calibration(model, calibration):
        metrics = predict_and_evaluate(
            model,
            val_set,
            device,
            outputs.results,
            batch_size=cfg.batch_size or 1,
            dist=dist,
            progress=progress and dist.is_main,
            # As the run trained: a run with --amp predicts under autocast too (where it can).
            amp=bool(cfg.amp) and mixed_precision_available(device),
            **settings,
            **evaluate_options,
        )
    if metrics is None:
        return None
    if calibration is not None:
        metrics = {"calibration": "norcal", "norcal_gamma": calibration.gamma, **metrics}
    metrics = {
        "loss": cfg.loss,
        "activation": cfg.activation,
        "preset": cfg.preset,
        "data": cfg.data,
        "score_threshold": settings["score_threshold"],
        "max_dets": settings["max_dets"],
        **metrics,
    }
    write_text_atomic(outputs.metrics, json.dumps(metrics, indent=2) + "\n")
    return metrics


def prediction_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``workers``, ``score_threshold`` and ``max_dets`` of ``cfg``; the preset's (else LVIS's)
    where it has none (a run made before they were recorded)."""
    return recipe_values(cfg, ("workers", "score_threshold", "max_dets"))


@dataclass(frozen=True)
class OutputPaths:
    """Where an evaluation writes its results and metrics."""

    results: Path
    metrics: Path


def variant_name(
    cfg: TrainConfig,
    data: str | None,
    overrides: dict[str, Any],
    iou_types: Sequence[str] | None = None,
) -> str | None:
    """What makes an evaluation of a run another than the run's own, as a file-name part
    (``other_set``, ``score0.05-dets100``, ``bbox``, ``norcal-g0.5``), or None: its own data,
    score threshold and detections per image, masks and boxes, no calibration. Only the run's
    own evaluation may write its ``results.json`` and ``metrics.json``, which ``gumbel table``
    reads as the run's."""
    parts = []
    if data is not None and Path(data).resolve() != Path(cfg.data or "").resolve():
        parts.append(re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).resolve().name) or "data")
    own = recipe_values(cfg, ("score_threshold", "max_dets"))
    for name, tag in (("score_threshold", "score"), ("max_dets", "dets")):
        if name in overrides and overrides[name] != own[name]:
            parts.append(f"{tag}{overrides[name]:g}")
    if iou_types is not None and set(iou_types) != {"segm", "bbox"}:
        parts.append("+".join(sorted(set(iou_types))))
    if overrides.get("calibration", "none") != "none":
        parts.append(calibration_tag(overrides["norcal_gamma"]))
    return "-".join(parts) or None


def output_paths(run: RunLayout, variant: str | None, out: Path | None) -> OutputPaths:
    """``out/results.json`` and ``out/metrics.json`` when ``out`` is given; else the run's own
    files for its own evaluation (``variant`` None), else ``results.<variant>.json`` and
    ``metrics.<variant>.json`` beside them (see :func:`variant_name`): a run's own files are
    never replaced by another evaluation's."""
    if out is not None:
        layout = RunLayout(Path(out))
        if layout.config.is_file():  # a run folder: its metrics would become another's
            if layout.root.resolve() != run.root.resolve():
                raise InputError(
                    f"--out {out} is another run folder (it holds {layout.config.name}): its "
                    f"{layout.results.name} and {layout.metrics.name} would be replaced by "
                    f"those of {run.root}; use another folder"
                )
            if variant is not None:
                raise InputError(
                    f"--out {out} is the run folder itself: its own {layout.results.name} and "
                    f"{layout.metrics.name} would be replaced by those of other --data or "
                    f"settings ({variant}); leave --out out (results.{variant}.json) or use "
                    "another folder"
                )
        return OutputPaths(layout.results, layout.metrics)
    if variant is None:
        return OutputPaths(run.results, run.metrics)
    return OutputPaths(run.results_for(variant), run.metrics_for(variant))


#: The weight whose first dimension is the model's number of classes C (one mask per class).
_CLASS_WEIGHT = "roi_heads.mask_predictor.mask_fcn_logits.weight"


def _check_classes(
    model_state: dict, path: Path, train_data: dict, val_set: LVISDetection, data: str
) -> None:
    """The data's categories are the ones the checkpoint's model was trained on (their number;
    train and val the same ids), before the state is loaded: other data is named as such, not
    taken for a checkpoint that does not fit its configuration."""
    train_ids = sorted(int(c["id"]) for c in train_data["categories"])
    if list(val_set.category_ids) != train_ids:
        raise InputError(
            f"data {data}: the train and val annotation files have different categories"
        )
    weight = model_state.get(_CLASS_WEIGHT) if isinstance(model_state, dict) else None
    if weight is not None and getattr(weight, "ndim", 0) >= 1 and len(weight) != len(train_ids):
        raise InputError(
            f"the classes of data {data} differ from the run's: {len(train_ids)} categories, "
            f"the model of {path} was trained on {len(weight)}"
        )


def evaluate_checkpoint(
    source: str | Path,
    *,
    data: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    score_threshold: float | None = None,
    max_dets: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    calibration: str | None = None,
    norcal_gamma: float | None = None,
    **evaluate_options: Any,
) -> tuple[dict[str, Any] | None, OutputPaths]:
    """``gumbel eval``: a run folder (its ``model_final.pt``, else ``last.pt``) or a checkpoint
    file, evaluated on its data's val set (or ``data``); writes results and metrics beside it
    (see :func:`output_paths`), after checking, before inference, that it can.

    ``batch_size``, ``workers``, ``score_threshold`` and ``max_dets`` default to the run's
    configuration. ``calibration`` "norcal" with ``norcal_gamma``: scores calibrated by NorCal
    for the training set's image counts (never the run's own files). Under torchrun every
    process predicts its share of the images (see the module docstring); the metrics come back
    on rank 0, None on the others."""
    check_fields(device=device)
    check_calibration(calibration, norcal_gamma)
    overrides = check_fields(
        batch_size=batch_size,
        workers=workers,
        score_threshold=score_threshold,
        max_dets=max_dets,
        calibration=calibration,
        norcal_gamma=norcal_gamma,
    )
    source = Path(source)
    if source.is_dir():
        run = RunLayout(source)
        path = run.final if run.final.is_file() else run.last
        if not path.is_file():
            raise InputError(
                f"no checkpoint in {source} (expected {run.final.name} or {run.last.name})"
            )
    else:
        path, run = source, RunLayout(source.parent)
    state = ckpt.load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise InputError(f"{path} holds no model and configuration")
    cfg = TrainConfig.from_dict(state["config"])
    variant = variant_name(cfg, data, overrides, evaluate_options.get("iou_types"))
    outputs = output_paths(run, variant, Path(out) if out is not None else None)
    check_writable_folder(outputs.results.parent)
    cfg = cfg.replace(**overrides, **({"data": data} if data is not None else {}))
    # Calibrated only when asked here: a run trained with --calibration still has its own,
    # uncalibrated evaluation, which this call may be repeating.
    cfg = cfg.replace(calibration=calibration or "none", norcal_gamma=norcal_gamma)
    dev = pick_device(device)
    dist = init_distributed(dev.type)
    try:
        if dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank)
        # rank 0 first: it makes the synthetic data (once) before the others look for it
        failure = None
        if dist.is_main:
            try:
                data_paths(cfg.data)
            except InputError as err:
                failure = err
        if not _agree(failure is None, dist):
            raise failure or InputError(f"data folder not found: {cfg.data}")
        paths = data_paths(cfg.data)
        # The loss needs only the training classes' frequencies: no training images are touched.
        train_data = lvis_io.load_lvis_json(paths.train_ann)
        val_set = LVISDetection(paths.val_ann, paths.image_root, train=False)
        _check_classes(state["model"], path, train_data, val_set, data or cfg.data)
        loss = make_loss(
            cfg, lvis_io.class_frequency(train_data), lvis_io.frequency_groups(train_data)
        )
        model = build_model(cfg.preset, loss.num_classes, loss, enh=cfg.enh)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise InputError(
                f"{path} does not fit the model of its configuration (different classes or preset?)"
            ) from None
        model.to(dev)
        metrics = evaluate_run(
            model,
            val_set,
            dev,
            run,
            cfg,
            progress,
            outputs,
            dist,
            calibration=make_calibration(cfg, lvis_io.image_counts(train_data)),
            **evaluate_options,
        )
    finally:
        cleanup(dist)
    return metrics, outputs

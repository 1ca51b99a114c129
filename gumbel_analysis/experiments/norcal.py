"""NorCal (Pan et al., NeurIPS 2021) as a row of ``gumbel reproduce``'s Table 4.

NorCal retrains nothing: at test time each foreground class score ``p_c`` of a trained run is
divided by ``N_c^gamma``, ``N_c`` being the number of training images the class appears in (the
category's ``image_count`` in the training annotations), and the scores are renormalised with the
background before the score threshold, NMS and the 300-per-image cut. For a softmax head, whose
classes share one background, that is ``p'_c = p_c N_c^-gamma / (sum_k p_k N_k^-gamma + p_bg)``;
Sigmoid and Gumbel heads renormalise each class against its own ``1 - p_c``
(``gumbel_analysis/model/calibration.py``, docs/calibration.md). ``gamma = 0`` leaves the scores
as they are.

The one free parameter, ``gamma``, is chosen on a held-out split, never on the val split the
results are reported on. ``OUT/heldout`` holds the benchmark made with ``heldout`` set
(:func:`heldout_spec`, ``gumbel make-data --heldout 1``): the same training split as ``OUT/data``
(the same images, annotations and categories, only the ``info`` naming the split differs; checked,
since ``N_c`` must be the models' training image counts), and in place of val as many other
images, drawn from the same distribution. For each finished run
of the source configuration (Softmax with RFS by default) :func:`pick_gamma` evaluates the run
at every gamma of :data:`NORCAL_GAMMAS` on the held-out split and keeps the best mask AP (ties:
the smallest gamma); :func:`calibrated_metrics` then evaluates the run's val split once at that
gamma, and :func:`measure_norcal` adds those metrics as configuration ``norcal``.

Caching. Each evaluation is ``gumbel eval RUN --calibration norcal --norcal-gamma G [--data
OUT/heldout]`` (:func:`gumbel_analysis.engine.inference.evaluate_checkpoint`), which writes
beside the run's own files, never over them:

* ``RUN/results.heldout-norcal-gG.json`` and ``RUN/metrics.heldout-norcal-gG.json``: on the
  held-out split, one pair per gamma;
* ``RUN/results.norcal-gG.json`` and ``RUN/metrics.norcal-gG.json``: on val at the chosen gamma.

The report is rebuilt on every ``gumbel reproduce``, so an evaluation whose metrics file is
there, records NorCal at that gamma on that data and is newer than the run's checkpoint is read
back instead of run again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gumbel_analysis.data.lvis_io import read_json
from gumbel_analysis.data.synthetic import ANNOTATION_FILES, SyntheticSpec, make_synthetic
from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments.measure import ItemContext, Measurement
from gumbel_analysis.experiments.runs import check_metrics
from gumbel_analysis.experiments.tabular import EMPTY, MeanAndDifference, Plain, Table, table
from gumbel_analysis.io import remove_leftovers
from gumbel_analysis.spec.config import TrainConfig, check_fields
from gumbel_analysis.spec.layout import RunLayout

if TYPE_CHECKING:
    from gumbel_analysis.engine.inference import OutputPaths

#: The gammas tried on the held-out split. The seeds' Softmax models chose 0.75 from 0-1 on the
#: benchmark (docs/calibration.md), inside the range; RFS already rebalances the classes and
#: the optimum may move either way, so the grid runs on past 1 in the same steps.
NORCAL_GAMMAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
#: Which held-out split (``SyntheticSpec.heldout``, ``gumbel make-data --heldout K``): any
#: K >= 1 draws validation images apart from the val split's.
HELDOUT_SPLIT = 1
#: Images of the held-out split: as many as the benchmark's val split (600), so the held-out
#: images look like val's. Every class keeps at least the benchmark's 6 images, so a smaller
#: split would crowd its images (200 images: 3.8 classes per image against val's 2.7).
HELDOUT_IMAGES = 600
#: The folder of ``OUT`` that holds the held-out split.
HELDOUT_FOLDER = "heldout"
#: The source run's metrics that the table shows without and with NorCal.
SHOWN_METRICS = ("AP", "APr", "APb")


def heldout_folder(out: Path) -> Path:
    """``OUT/heldout``: where ``gumbel reproduce`` keeps the held-out split."""
    return Path(out) / HELDOUT_FOLDER


def heldout_spec(spec: SyntheticSpec | None = None, images: int | None = None) -> SyntheticSpec:
    """``spec`` (default: the benchmark, ``material.BENCHMARK``) with its val split replaced by
    held-out split :data:`HELDOUT_SPLIT` of ``images`` images (default :data:`HELDOUT_IMAGES`).
    The training split is the same: the generator draws it before, and apart from, val."""
    if spec is None:
        from gumbel_analysis.experiments import material  # read now: tests may replace it

        spec = material.BENCHMARK
    images = HELDOUT_IMAGES if images is None else images
    return dataclasses.replace(spec, val_images=int(images), heldout=HELDOUT_SPLIT)


def _annotation(folder: Path, split: str) -> Path:
    return folder / "annotations" / ANNOTATION_FILES[split]


def check_heldout(out: Path, spec: SyntheticSpec | None = None, images: int | None = None) -> Path:
    """``OUT/heldout``, which holds the held-out split of ``spec`` (see :func:`heldout_spec`) or
    is still to be made (absent or an empty folder); else InputError. Nothing is written."""
    folder = heldout_folder(out)
    want = heldout_spec(spec, images)
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        val = _annotation(folder, "val")
        if not folder.is_dir() or not val.is_file():
            raise InputError(
                f"{folder} is not a held-out split (no annotations/{val.name}); move it away "
                "or use another --out"
            )
        info = read_json(val, "held-out annotation file").get("info", {})
        key = info.get("key") if isinstance(info, dict) else None
        if key != want.key():
            raise InputError(
                f"{folder} holds another dataset (key {key!r}, the held-out split is "
                f"{want.key()!r}); move it away or use another --out"
            )
    return folder


def ensure_heldout(
    out: Path,
    progress: bool = False,
    spec: SyntheticSpec | None = None,
    images: int | None = None,
) -> Path:
    """The held-out split in ``OUT/heldout``: made if absent (built beside it and renamed into
    place, so it is whole or absent; a killed maker's leftovers are removed first), else checked
    to be it. Its training split is checked to be ``OUT/data``'s where that exists."""
    folder = check_heldout(out, spec, images)
    if not folder.is_dir() or not any(folder.iterdir()):  # absent, or an empty folder
        remove_leftovers(folder)  # of a reproduce killed while it made the split
        Path(out).mkdir(parents=True, exist_ok=True)
        try:
            make_synthetic(folder, heldout_spec(spec, images), progress=progress)
        except InputError:
            if not (folder.is_dir() and any(folder.iterdir())):  # else another maker won
                raise
        check_heldout(out, spec, images)
    data = Path(out) / "data"
    if _annotation(data, "train").is_file():
        check_same_training_split(folder, data)
    return folder


def _training_split(folder: Path) -> dict[str, Any]:
    data = read_json(_annotation(folder, "train"), "training annotation file")
    if not isinstance(data, dict):
        raise InputError(f"{_annotation(folder, 'train')} does not hold an LVIS object")
    return data


def check_same_training_split(heldout: Path, data: Path, *, full: bool = True) -> None:
    """InputError unless ``heldout``'s training annotations are ``data``'s: NorCal's ``N_c``
    (the categories' ``image_count``) and the loss's class frequencies come from them. ``full``:
    every image, annotation and category (all but ``info``, which names the split); else the
    categories and the number of images, all that an evaluation reads of them."""
    mine, theirs = _training_split(heldout), _training_split(data)
    fields = ("images", "annotations", "categories") if full else ("categories",)
    differ = [f for f in fields if mine.get(f) != theirs.get(f)]
    if not full and len(mine.get("images", ())) != len(theirs.get("images", ())):
        differ.append("number of images")
    if differ:
        raise InputError(
            f"the training split of {heldout} is not that of {data} (its {differ[0]} differ): "
            "NorCal's N_c must be the run's training image counts; remake it"
        )


# --- the evaluations, cached in the run folder -------------------------------------------------


def _run_config(run: Path) -> TrainConfig:
    layout = RunLayout(Path(run))
    return TrainConfig.from_dict(read_json(layout.config, "run configuration"), str(layout.config))


def _checkpoint(run: Path) -> Path | None:
    """The checkpoint that ``gumbel eval RUN`` evaluates (model_final.pt, else last.pt)."""
    layout = RunLayout(Path(run))
    for path in (layout.final, layout.last):
        if path.is_file():
            return path
    return None


def _outputs(run: Path, data: Path | None, gamma: float) -> OutputPaths:
    """Where ``gumbel eval RUN --calibration norcal --norcal-gamma gamma [--data data]`` writes
    (the engine's own naming: ``results.<variant>.json``, ``metrics.<variant>.json``)."""
    from gumbel_analysis.engine.inference import output_paths, variant_name

    overrides = check_fields(calibration="norcal", norcal_gamma=gamma)
    cfg = _run_config(run)
    variant = variant_name(cfg, None if data is None else str(data), overrides)
    return output_paths(RunLayout(Path(run)), variant, None)


def _same_data(recorded: Any, expected: str | None) -> bool:
    if recorded is None or expected is None:
        return recorded == expected
    return Path(str(recorded)).resolve() == Path(expected).resolve()


def _cached(run: Path, paths: OutputPaths, gamma: float, data: str | None) -> dict | None:
    """The metrics of an earlier evaluation of ``run`` at ``gamma`` on ``data`` (the data it
    records), or None when there is none, it is broken or older than the checkpoint."""
    if not (paths.metrics.is_file() and paths.results.is_file()):
        return None
    try:
        metrics = json.loads(paths.metrics.read_text())
        if not isinstance(metrics, dict):
            return None
        check_metrics(paths.metrics, metrics)
    except (OSError, ValueError, RecursionError, InputError):
        return None  # evaluated again, and written over
    recorded = metrics.get("norcal_gamma")
    if metrics.get("calibration") != "norcal" or not isinstance(recorded, int | float):
        return None
    if float(recorded) != float(gamma) or not _same_data(metrics.get("data"), data):
        return None
    checkpoint = _checkpoint(run)
    if checkpoint is not None and paths.metrics.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns:
        return None  # a model trained again since
    return metrics


def _norcal_metrics(
    run: Path, gamma: float, data: Path | None, device: str, progress: bool
) -> dict[str, Any]:
    """The metrics of ``run`` under NorCal at ``gamma`` on ``data``'s val split (None: the run's
    own val split): read back from the run folder, else evaluated and written there."""
    from gumbel_analysis.engine import inference

    run = Path(run)
    cfg = _run_config(run)
    # What the engine records as the evaluation's data: what it is given, else the run's own.
    recorded = str(Path(data).resolve()) if data is not None else cfg.data
    paths = _outputs(run, data, gamma)
    cached = _cached(run, paths, gamma, recorded)
    if cached is not None:
        return cached
    metrics, written = inference.evaluate_checkpoint(
        run,
        data=None if data is None else recorded,
        device=device,
        progress=progress,
        calibration="norcal",
        norcal_gamma=float(gamma),
    )
    if metrics is None:  # only rank 0 of torchrun gets the metrics; this runs in one process
        raise InputError(f"the evaluation of {run} returned no metrics")
    if written != paths:
        raise InputError(f"{run}: the evaluation wrote {written.metrics}, not {paths.metrics}")
    return metrics


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics file, as ``measure_runs`` reads a run's."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _check_gammas(gammas: Sequence[float]) -> list[float]:
    values = sorted({float(g) for g in gammas})
    if not values:
        raise InputError("NorCal needs at least one gamma to choose from")
    bad = [g for g in values if not (math.isfinite(g) and g >= 0)]
    if bad:
        raise InputError(f"NorCal's gamma must be a finite number of at least 0, got {bad[0]}")
    return values


def pick_gamma(
    run: Path,
    heldout: Path,
    gammas: Sequence[float] = NORCAL_GAMMAS,
    device: str = "auto",
    *,
    progress: bool = False,
) -> tuple[float, dict[float, float]]:
    """The gamma of ``gammas`` with the best mask AP of the finished ``run`` under NorCal on
    ``heldout``'s val split (ties: the smallest), and the AP at each gamma (NaN where AP is
    undefined; such a gamma is never chosen over one with an AP). Each evaluation is cached in
    the run folder (``results.<heldout>-norcal-gG.json`` and its metrics; module docstring)."""
    run, heldout = Path(run), Path(heldout)
    values = _check_gammas(gammas)
    cfg = _run_config(run)
    if cfg.data is not None and _annotation(Path(cfg.data), "train").is_file():
        check_same_training_split(heldout, Path(cfg.data), full=False)
    ap: dict[float, float] = {}
    for gamma in values:
        value = _norcal_metrics(run, gamma, heldout, device, progress).get("AP")
        ok = isinstance(value, int | float) and math.isfinite(value)
        ap[gamma] = float(value) if ok else math.nan
    best = min(values, key=lambda g: (-ap[g] if not math.isnan(ap[g]) else math.inf, g))
    return best, ap


def calibrated_metrics(
    run: Path, gamma: float, device: str = "auto", *, progress: bool = False
) -> dict[str, float]:
    """The finite numbers of ``run``'s val metrics under NorCal at ``gamma`` (AP, APr, APc, APf,
    APb, bbox/..., with ``norcal_gamma``, ``score_threshold`` and ``max_dets`` as the metrics
    file records them), cached as ``RUN/results.norcal-gG.json`` and its metrics."""
    _check_gammas([gamma])
    return _numbers(_norcal_metrics(Path(run), float(gamma), None, device, progress))


# --- the report ----------------------------------------------------------------------------------


def measure_norcal(
    ctx: ItemContext,
    source: str = "softmax-rfs",
    name: str = "norcal",
    *,
    gammas: Sequence[float] = NORCAL_GAMMAS,
    device: str = "auto",
) -> Measurement:
    """For every finished run of configuration ``source`` at the item's schedule: gamma picked
    on ``OUT/heldout`` (made if absent), the val metrics at that gamma added to ``ctx.measured``
    as configuration ``name`` (same seed), so that claims compare it like a trained
    configuration. Returns the table of the choice and of the metrics without and with NorCal,
    per seed; nothing without a finished run of ``source``."""
    schedule = ctx.item.schedule
    runs = ctx.measured.finished(source, schedule)
    if not runs:
        return Measurement()
    values = _check_gammas(gammas)
    heldout = ensure_heldout(Path(ctx.data).parent)
    check_same_training_split(heldout, Path(ctx.data))
    rows: list[list[Any]] = []
    for seed, run in sorted(runs.items()):
        gamma, heldout_ap = pick_gamma(run.path, heldout, values, device)
        metrics = calibrated_metrics(run.path, gamma, device)
        for metric, value in metrics.items():
            ctx.measured.add(name, schedule, metric, seed, value)
        own = run.metrics or {}
        row: list[Any] = [Plain(str(seed)), Plain(f"{gamma:g}")]
        row += [None if math.isnan(heldout_ap[g]) else heldout_ap[g] for g in values]
        for metric in SHOWN_METRICS:
            row += [_value(own.get(metric)), metrics.get(metric)]
        rows.append(row)
    if len(rows) > 1:
        rows.append(_summary_row(ctx, source, name, schedule, len(values)))
    return Measurement([_table(ctx, source, values, rows)])


def _value(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _summary_row(ctx: ItemContext, source: str, name: str, schedule: str, n: int) -> list[Any]:
    """Mean ± std over seeds, and the paired Δ (NorCal − the source) under each NorCal column."""
    measured = ctx.measured
    row: list[Any] = [Plain("mean ± std (Δ)"), EMPTY, *([EMPTY] * n)]
    for metric in SHOWN_METRICS:
        row.append(measured.stat(source, schedule, metric))
        stat = measured.stat(name, schedule, metric)
        delta = measured.difference(name, source, schedule, metric)
        row.append(None if stat is None else MeanAndDifference(stat, delta))
    return row


def _table(ctx: ItemContext, source: str, gammas: list[float], rows: list[list[Any]]) -> Table:
    from gumbel_analysis.experiments.material import config_label

    label = config_label(source)
    headers = ["seed", "γ chosen", *(f"held-out AP γ={g:g}" for g in gammas)]
    for metric in SHOWN_METRICS:
        headers += [metric, f"{metric} NorCal"]
    caption = (
        f"NorCal on the {source} runs ({label}, {ctx.item.schedule}): per seed, γ chosen from "
        f"{', '.join(f'{g:g}' for g in gammas)} by mask AP on the held-out split "
        f"({HELDOUT_FOLDER}/: the same training images, {HELDOUT_IMAGES} other validation "
        "images), never on val; then val AP, APr and APb of the run without and with NorCal at "
        "that γ (Δ: paired over seeds, * where the t test rejects at 5%)."
    )
    return table(headers, rows, caption, digits=2)


__all__ = [
    "HELDOUT_IMAGES",
    "HELDOUT_SPLIT",
    "NORCAL_GAMMAS",
    "calibrated_metrics",
    "check_heldout",
    "check_same_training_split",
    "ensure_heldout",
    "heldout_folder",
    "heldout_spec",
    "measure_norcal",
    "pick_gamma",
]

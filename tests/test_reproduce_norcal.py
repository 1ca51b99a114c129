"""NorCal's row of ``gumbel reproduce`` (experiments/norcal.py): the held-out split has the
benchmark's training split, gamma is picked on it as ``gumbel eval --calibration norcal --data
HELDOUT`` measures it, every evaluation is cached in the run folder, and the calibrated val
metrics are added as configuration ``norcal`` per seed (on a tiny stand-in for the benchmark)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import ANNOTATION_FILES, SyntheticSpec, _plan, make_synthetic
from gumbel_analysis.engine import inference
from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments import material, norcal
from gumbel_analysis.experiments.material import ITEMS
from gumbel_analysis.experiments.measure import ItemContext, Measured
from gumbel_analysis.experiments.runs import read_run
from gumbel_analysis.experiments.tabular import to_csv, to_markdown
from gumbel_analysis.spec.config import TrainConfig, check_fields
from gumbel_analysis.spec.layout import RunLayout

runner = CliRunner()
TINY = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)
HELDOUT_IMAGES = 5  # the tiny stand-in's held-out split
GAMMAS = (0.0, 0.5, 1.0)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


def train_json(folder: Path) -> dict:
    return json.loads((folder / "annotations" / ANNOTATION_FILES["train"]).read_text())


def val_json(folder: Path) -> dict:
    return json.loads((folder / "annotations" / ANNOTATION_FILES["val"]).read_text())


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A reproduce folder: OUT/data (the tiny benchmark) and OUT/heldout beside it."""
    out = tmp_path_factory.mktemp("norcal") / "report"
    out.mkdir()
    make_synthetic(out / "data", TINY, progress=False)
    norcal.ensure_heldout(out, spec=TINY, images=HELDOUT_IMAGES)
    return out


@pytest.fixture(scope="module")
def run(out) -> Path:
    """A finished Softmax + RFS run trained (a few steps) on OUT/data, as reproduce names it."""
    path = out / "runs" / "softmax-rfs-2x-s0"
    args = ["train", "--data", str((out / "data").resolve()), "--out", str(path)]
    args += ["--loss", "softmax", "--sampler", "rfs", "--max-iters", "4", "--epochs", "1"]
    args += ["--max-dets", "20", "--no-grad-log", *FAST]  # few detections: fast evaluations
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return path


def norcal_files(run: Path) -> dict[str, int]:
    """The run folder's NorCal files and their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if "norcal" in p.name}


def forbid_evaluation(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again instead of reading the cached evaluation")

    monkeypatch.setattr(inference, "evaluate_checkpoint", refuse)


# --- the held-out split -------------------------------------------------------------------------


def test_the_heldout_split_has_the_benchmarks_training_split(out):
    data, heldout = out / "data", norcal.heldout_folder(out)
    assert heldout == out / "heldout"
    train, held_train = train_json(data), train_json(heldout)
    for key in ("images", "annotations", "categories"):
        assert held_train[key] == train[key], key
    assert held_train["info"]["key"] == norcal.heldout_spec(TINY, HELDOUT_IMAGES).key()
    assert held_train["info"]["key"] != train["info"]["key"]
    for image in train["images"]:  # and the training images themselves
        name = image["file_name"]
        assert (heldout / "images" / name).read_bytes() == (data / "images" / name).read_bytes()
    # its val split: other images, never val's
    val, held_val = val_json(data), val_json(heldout)
    assert len(held_val["images"]) == HELDOUT_IMAGES and len(val["images"]) == TINY.val_images
    assert held_val["annotations"] != val["annotations"][: len(held_val["annotations"])]
    for image in held_val["images"]:
        name = image["file_name"]
        if (data / "images" / name).is_file():
            assert (heldout / "images" / name).read_bytes() != (data / "images" / name).read_bytes()
    assert held_val["info"]["spec"]["heldout"] == norcal.HELDOUT_SPLIT
    norcal.check_same_training_split(heldout, data)


def test_the_benchmarks_heldout_split_plans_the_same_training_images():
    """On the real benchmark, without drawing it: the same classes in the same training images,
    and a held-out split shaped like val (as many images as the benchmark's val split)."""
    spec = norcal.heldout_spec()
    assert spec == dataclasses.replace(
        material.BENCHMARK, val_images=norcal.HELDOUT_IMAGES, heldout=norcal.HELDOUT_SPLIT
    )
    assert material.BENCHMARK.val_images == norcal.HELDOUT_IMAGES
    mine, theirs = _plan(spec), _plan(material.BENCHMARK)
    assert mine.objects["train"] == theirs.objects["train"]
    assert (mine.train_counts == theirs.train_counts).all()
    assert mine.objects["val"] != theirs.objects["val"]
    assert 0.0 in norcal.NORCAL_GAMMAS and 0.75 in norcal.NORCAL_GAMMAS
    assert list(norcal.NORCAL_GAMMAS) == sorted(set(norcal.NORCAL_GAMMAS))


def test_ensure_heldout_reuses_the_split_and_removes_a_killed_makers_leftovers(out, tmp_path):
    ann = norcal.heldout_folder(out) / "annotations" / ANNOTATION_FILES["val"]
    before = ann.stat().st_mtime_ns
    assert norcal.ensure_heldout(out, spec=TINY, images=HELDOUT_IMAGES) == out / "heldout"
    assert ann.stat().st_mtime_ns == before
    # a reproduce killed while it made the split left its temporary folder
    fresh = tmp_path / "fresh"
    leftover = fresh / ".heldout.abcd1234.tmp"
    (leftover / "images").mkdir(parents=True)
    (fresh / "keep.txt").write_text("x")
    folder = norcal.ensure_heldout(fresh, spec=TINY, images=HELDOUT_IMAGES)
    assert not leftover.exists() and (fresh / "keep.txt").is_file()
    assert val_json(folder)["info"]["key"] == norcal.heldout_spec(TINY, HELDOUT_IMAGES).key()
    assert sorted(p.name for p in fresh.iterdir()) == ["heldout", "keep.txt"]


def test_a_heldout_folder_holding_another_dataset_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_synthetic(other / "heldout", TINY, progress=False)  # the val split, not a held-out one
    with pytest.raises(InputError, match="holds another dataset") as err:
        norcal.ensure_heldout(other, spec=TINY, images=HELDOUT_IMAGES)
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk"
    (junk / "heldout").mkdir(parents=True)
    (junk / "heldout" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a held-out split") as err:
        norcal.ensure_heldout(junk, spec=TINY, images=HELDOUT_IMAGES)
    assert "\n" not in str(err.value)
    assert (junk / "heldout" / "notes.txt").read_text() == "mine"  # nothing touched


def test_a_heldout_split_of_other_training_images_is_refused(tmp_path):
    """OUT/data of another seed: the held-out split made for the spec is not its training split."""
    out = tmp_path / "report"
    out.mkdir()
    make_synthetic(out / "data", dataclasses.replace(TINY, seed=3), progress=False)
    with pytest.raises(InputError, match=r"training split of .* is not that of") as err:
        norcal.ensure_heldout(out, spec=TINY, images=HELDOUT_IMAGES)
    assert "\n" not in str(err.value)


# --- picking gamma --------------------------------------------------------------------------------


def test_pick_gamma_is_what_gumbel_eval_reports_and_is_cached(out, run, tmp_path, monkeypatch):
    heldout = norcal.heldout_folder(out)
    own = {p: (run / p).read_bytes() for p in ("results.json", "metrics.json")}
    best, ap = norcal.pick_gamma(run, heldout, GAMMAS, device="cpu")
    assert list(ap) == list(GAMMAS)
    finite = {g: v for g, v in ap.items() if not math.isnan(v)}
    top = max(finite.values())
    assert best == min(g for g, v in finite.items() if v == top)  # argmax, smallest on ties
    for g in GAMMAS:
        metrics = json.loads((run / f"metrics.heldout-norcal-g{g:g}.json").read_text())
        assert metrics["norcal_gamma"] == g and metrics["calibration"] == "norcal"
        assert Path(metrics["data"]) == heldout.resolve()
        assert (run / f"results.heldout-norcal-g{g:g}.json").is_file()
    assert {p: (run / p).read_bytes() for p in own} == own  # the run's own files untouched
    # `gumbel eval RUN --calibration norcal --norcal-gamma G --data HELDOUT` reports the same
    results = {g: (run / f"results.heldout-norcal-g{g:g}.json").read_bytes() for g in GAMMAS}
    assert results[0.0] != results[1.0]  # the calibration changed the scores
    for g in sorted({best, 1.0}):
        (tmp_path / f"g{g:g}").mkdir(exist_ok=True)
        result = runner.invoke(
            app,
            [
                *("eval", str(run), "--calibration", "norcal", "--norcal-gamma", f"{g:g}"),
                *("--data", str(heldout), "--out", str(tmp_path / f"g{g:g}"), "--json", *FAST),
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["AP"] == pytest.approx(ap[g], abs=1e-9)
        assert (tmp_path / f"g{g:g}" / "results.json").read_bytes() == (
            run / f"results.heldout-norcal-g{g:g}.json"
        ).read_bytes()
    # a second call reads every evaluation back: nothing evaluated, nothing rewritten
    files = norcal_files(run)
    forbid_evaluation(monkeypatch)
    assert norcal.pick_gamma(run, heldout, GAMMAS, device="cpu") == (best, ap)
    assert norcal_files(run) == files


def test_calibrated_metrics_are_gumbel_evals_on_val_and_cached(run, tmp_path, monkeypatch):
    metrics = norcal.calibrated_metrics(run, 0.5, device="cpu")
    written = json.loads((run / "metrics.norcal-g0.5.json").read_text())
    assert metrics == {
        k: float(v) for k, v in written.items() if isinstance(v, int | float) and v is not None
    }
    assert metrics["norcal_gamma"] == 0.5 and {"AP", "APr", "APc", "APf", "APb"} <= set(metrics)
    (tmp_path / "val").mkdir()
    result = runner.invoke(
        app,
        [
            *("eval", str(run), "--calibration", "norcal", "--norcal-gamma", "0.5"),
            *("--out", str(tmp_path / "val"), "--json", *FAST),
        ],
    )
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)
    for key in ("AP", "APr", "APb"):
        assert metrics[key] == pytest.approx(reported[key], abs=1e-9)
    files = norcal_files(run)
    forbid_evaluation(monkeypatch)
    assert norcal.calibrated_metrics(run, 0.5, device="cpu") == metrics
    assert norcal_files(run) == files


def fake_run(run: Path, folder: Path) -> Path:
    """A run folder with ``run``'s configuration and no checkpoint."""
    folder.mkdir()
    shutil.copy(RunLayout(run).config, RunLayout(folder).config)
    return folder


def fake_evaluator(ap_of: dict[float, float | None], calls: list[float]):
    """evaluate_checkpoint that writes the engine's files with AP ``ap_of[gamma]``."""

    def evaluate(source, *, data=None, calibration=None, norcal_gamma=None, **_):
        calls.append(norcal_gamma)
        layout = RunLayout(Path(source))
        cfg = TrainConfig.from_dict(json.loads(layout.config.read_text()))
        overrides = check_fields(calibration=calibration, norcal_gamma=norcal_gamma)
        paths = inference.output_paths(layout, inference.variant_name(cfg, data, overrides), None)
        metrics = {
            "data": data if data is not None else cfg.data,
            "calibration": "norcal",
            "norcal_gamma": norcal_gamma,
            "AP": ap_of[norcal_gamma],
        }
        paths.results.write_text("[]")
        paths.metrics.write_text(json.dumps(metrics))
        return metrics, paths

    return evaluate


def test_the_best_ap_wins_ties_go_to_the_smaller_gamma_and_undefined_never_wins(
    out, run, tmp_path, monkeypatch
):
    heldout = norcal.heldout_folder(out)
    folder = fake_run(run, tmp_path / "run")
    calls: list[float] = []
    ap_of = {0.0: 10.0, 0.25: None, 0.5: 12.0, 0.75: 12.0, 1.0: 11.0}
    monkeypatch.setattr(inference, "evaluate_checkpoint", fake_evaluator(ap_of, calls))
    best, ap = norcal.pick_gamma(folder, heldout, [1.0, 0.5, 0.0, 0.75, 0.25, 0.5], "cpu")
    assert best == 0.5 and sorted(calls) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(ap) == [0.0, 0.25, 0.5, 0.75, 1.0] and math.isnan(ap[0.25])
    assert ap[0.75] == 12.0
    # all undefined: the smallest gamma (0: no calibration)
    none = fake_run(run, tmp_path / "none")
    monkeypatch.setattr(inference, "evaluate_checkpoint", fake_evaluator(dict.fromkeys(ap_of), []))
    assert norcal.pick_gamma(none, heldout, [0.5, 0.25], "cpu")[0] == 0.25
    with pytest.raises(InputError, match="at least one gamma"):
        norcal.pick_gamma(folder, heldout, [], "cpu")
    with pytest.raises(InputError, match="at least 0"):
        norcal.pick_gamma(folder, heldout, [0.5, -1.0], "cpu")


def test_a_stale_or_foreign_cached_evaluation_is_evaluated_again(out, run, tmp_path, monkeypatch):
    heldout = norcal.heldout_folder(out)
    folder = fake_run(run, tmp_path / "run")
    calls: list[float] = []
    monkeypatch.setattr(inference, "evaluate_checkpoint", fake_evaluator({0.5: 20.0}, calls))
    assert norcal.pick_gamma(folder, heldout, [0.5], "cpu") == (0.5, {0.5: 20.0})
    assert norcal.pick_gamma(folder, heldout, [0.5], "cpu") == (0.5, {0.5: 20.0})
    assert calls == [0.5]  # the second read it back
    metrics = folder / "metrics.heldout-norcal-g0.5.json"
    # a model trained again after the evaluation
    checkpoint = RunLayout(folder).final
    checkpoint.write_bytes(b"")
    later = metrics.stat().st_mtime_ns + 1_000_000_000
    os.utime(checkpoint, ns=(later, later))
    norcal.pick_gamma(folder, heldout, [0.5], "cpu")
    assert calls == [0.5, 0.5]
    os.utime(checkpoint, ns=(0, 0))  # the checkpoint older than the evaluation again
    norcal.pick_gamma(folder, heldout, [0.5], "cpu")
    assert calls == [0.5, 0.5]
    # a metrics file of another data folder, of another gamma, or broken
    for change in ({"data": str(out / "data")}, {"norcal_gamma": 0.25}, None):
        text = json.dumps({**json.loads(metrics.read_text()), **change}) if change else "{"
        metrics.write_text(text)
        norcal.pick_gamma(folder, heldout, [0.5], "cpu")
    assert calls == [0.5] * 5


# --- the report -----------------------------------------------------------------------------------


@pytest.fixture
def tiny_benchmark(monkeypatch):
    monkeypatch.setattr(material, "BENCHMARK", TINY)
    monkeypatch.setattr(norcal, "HELDOUT_IMAGES", HELDOUT_IMAGES)


def context(out: Path, runs: list[Path], tmp_path: Path) -> ItemContext:
    """Table 4's context with ``runs`` finished as softmax-rfs at 2x (as measure_runs reads)."""
    measured = Measured()
    for path in runs:
        r = read_run(path)
        measured.runs.setdefault(("softmax-rfs", "2x"), []).append(r)
        for metric, value in (r.metrics or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                measured.add("softmax-rfs", "2x", metric, r.seed, value)
    return ItemContext(ITEMS["table4"], measured, out / "data", tmp_path / "figures")


def test_measure_norcal_adds_the_calibrated_metrics_per_seed(
    tiny_benchmark, out, run, tmp_path, monkeypatch
):
    # a second seed: the same model as seed 1 (measure_norcal reads seeds from config.json),
    # copied with what seed 0's evaluations cached, so that they are read back, not repeated
    gamma, _ = norcal.pick_gamma(run, out / "heldout", GAMMAS, "cpu")
    norcal.calibrated_metrics(run, gamma, "cpu")
    second = out / "runs" / "softmax-rfs-2x-s1"
    if not second.exists():
        shutil.copytree(run, second)
        config = json.loads((second / "config.json").read_text())
        (second / "config.json").write_text(json.dumps({**config, "seed": 1}))
    ctx = context(out, [run, second], tmp_path)
    measurement = norcal.measure_norcal(ctx, gammas=GAMMAS, device="cpu")
    chosen = {}
    for seed, path in ((0, run), (1, second)):
        gamma, _ = norcal.pick_gamma(path, out / "heldout", GAMMAS, "cpu")
        chosen[seed] = gamma
        metrics = norcal.calibrated_metrics(path, gamma, "cpu")
        for metric, value in metrics.items():
            assert ctx.measured.by_seed("norcal", "2x", metric)[seed] == value, metric
    keys = {k[2] for k in ctx.measured.values if k[0] == "norcal"}
    assert keys == set(norcal.calibrated_metrics(run, chosen[0], "cpu"))
    assert chosen[0] == chosen[1]  # one model twice
    # the table: a row per seed (the gamma chosen), then the mean and the paired difference
    (table,) = measurement.tables
    assert len(table.rows) == 3
    csv = to_csv(table).splitlines()
    assert csv[1].startswith(f"0,{chosen[0]:g},") and csv[2].startswith(f"1,{chosen[1]:g},")
    assert "held-out AP γ=0.5" in to_markdown(table) and "APb NorCal" in to_markdown(table)
    ap_column = [c.title for c in table.columns].index("AP NorCal")
    assert table.rows[0][ap_column].value == pytest.approx(
        ctx.measured.by_seed("norcal", "2x", "AP")[0]
    )
    # rebuilt as the report is on every reproduce: nothing evaluated again
    forbid_evaluation(monkeypatch)
    files = norcal_files(run)
    again = norcal.measure_norcal(context(out, [run, second], tmp_path), gammas=GAMMAS)
    assert to_csv(again.tables[0]) == to_csv(table) and norcal_files(run) == files


def test_measure_norcal_without_a_finished_run_adds_nothing(tiny_benchmark, tmp_path, monkeypatch):
    forbid_evaluation(monkeypatch)
    out = tmp_path / "report"
    ctx = ItemContext(ITEMS["table4"], Measured(), out / "data", tmp_path / "figures")
    measurement = norcal.measure_norcal(ctx)
    assert measurement.tables == [] and ctx.measured.values == {}
    assert not out.exists()  # no held-out split made for nothing

"""``gumbel grads``: dB values and group means against numpy on hand-built gradient logs (the
schema of docs/grad-log.md, written here with plain h5py), SWMR and SIGKILLed files, bad input."""

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from gumbel_analysis.analysis import gradients as gradmod
from gumbel_analysis.analysis.gradients import (
    EpochRange,
    compare_logs,
    gradient_figure,
    parse_epochs,
    read_grad_log,
)
from gumbel_analysis.cli.app import app
from gumbel_analysis.errors import InputError

runner = CliRunner()

# Ids not contiguous; every group present; image counts not in id order.
CATEGORIES = {
    "id": [1, 2, 3, 5, 7, 9],
    "name": ["person", "cup", "yak", "car", "okapi", "lamp"],
    "frequency": ["f", "c", "r", "f", "r", "c"],
    "image_count": [900, 50, 4, 800, 3, 30],
    "instance_count": [5000, 80, 5, 2000, 3, 40],
}
C = len(CATEGORIES["id"])


# ----------------------------------------------------------------------------- writing logs


def create_grad_log(path, categories, attrs, swmr=False, chunk_rows=4):
    """An empty gradient log of schema version 1 (docs/grad-log.md); returns the open file."""
    import h5py
    import numpy as np

    f = h5py.File(path, "w", libver="latest")
    for key, value in attrs.items():
        f.attrs[key] = value
    C = len(categories["id"])
    group = f.create_group("categories")
    for key, values in categories.items():
        if key in ("name", "frequency"):
            group.create_dataset(
                key, data=np.array(values, dtype=object), dtype=h5py.string_dtype()
            )
        else:
            group.create_dataset(key, data=np.asarray(values, dtype=np.int64))
    for key, dtype in (
        ("positive_sum", "f8"),
        ("positive_count", "i8"),
        ("negative_sum", "f8"),
        ("negative_count", "f8"),
    ):
        f.create_dataset(key, (0, C), maxshape=(None, C), dtype=dtype, chunks=(chunk_rows, C))
    for key in ("iteration", "epoch"):
        f.create_dataset(key, (0,), maxshape=(None,), dtype="i8", chunks=(chunk_rows,))
    if swmr:
        f.swmr_mode = True
    return f


def append_row(f, row):
    """Append one row: ``row`` maps every row dataset name to its values."""
    n = f["iteration"].shape[0]
    for key, value in row.items():
        ds = f[key]
        ds.resize(n + 1, axis=0)
        ds[n] = value


def default_attrs(loss="gumbel", **extra):
    attrs = {
        "schema": "gumbel-analysis/grad-log",
        "schema_version": 1,
        "loss": loss,
        "activation": "gumbel" if loss == "gumbel" else "sigmoid",
        "temperature": 1.0 if loss == "gumbel" else float("nan"),
        "gumbel_mode": "stable" if loss == "gumbel" else "",
        "num_classes": len(CATEGORIES["id"]),
        "dataset": "synthetic:test",
        "grad_every": 10,
        "config": "{}",
    }
    attrs.update(extra)
    return attrs


def make_rows(seed, num_rows=5, epochs=None, scale=1.0, missing=()):
    """Random rows as arrays [rows, C]; columns in ``missing`` never have positives."""
    rng = np.random.default_rng(seed)
    count = rng.integers(0, 6, size=(num_rows, C))
    count[:, list(missing)] = 0
    positive_sum = -scale * rng.uniform(0.01, 1.0, size=(num_rows, C)) * count
    negative_count = rng.uniform(20, 50, size=(num_rows, C))
    negative_sum = rng.uniform(0.001, 0.1, size=(num_rows, C)) * negative_count
    return {
        "positive_sum": positive_sum,
        "positive_count": count,
        "negative_sum": negative_sum,
        "negative_count": negative_count,
        "iteration": (np.arange(num_rows) + 1) * 10,
        "epoch": np.arange(num_rows) // 2 if epochs is None else np.asarray(epochs),
    }


def write_grad_log(path, rows, categories=CATEGORIES, attrs=None, swmr=False, num_rows=None):
    """A closed gradient log holding ``rows`` (as from :func:`make_rows`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = create_grad_log(path, categories, attrs or default_attrs(), swmr=swmr)
    n = len(rows["iteration"]) if num_rows is None else num_rows
    for i in range(n):
        append_row(f, {k: v[i] for k, v in rows.items()})
        f.flush()
    f.close()
    return path


def expected_db(rows, scale=20, keep=None):
    """Independent numpy: positive and negative dB per category (NaN where no positives)."""
    keep = slice(None) if keep is None else keep
    ps = rows["positive_sum"][keep].sum(0)
    pc = rows["positive_count"][keep].sum(0)
    ns = rows["negative_sum"][keep].sum(0)
    nc = rows["negative_count"][keep].sum(0)
    pos = np.full(C, np.nan)
    has = pc > 0
    pos[has] = scale * np.log10(np.abs(ps[has]) / pc[has])
    return pos, scale * np.log10(ns / nc)


def expected_groups(db):
    freq = np.array(CATEGORIES["frequency"])
    out = {"all": np.nanmean(db)}
    for g in "rcf":
        values = db[freq == g]
        out[g] = np.nanmean(values) if (~np.isnan(values)).any() else math.nan
    return out


def json_of(args):
    result = runner.invoke(app, ["grads", *args, "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def db_list(values):
    return np.array([math.nan if v is None else v for v in values], dtype=float)


# ----------------------------------------------------------------------------- values


def test_db_values_and_group_means_match_numpy(tmp_path):
    rows = make_rows(0, num_rows=6)
    path = write_grad_log(tmp_path / "run" / "grads.h5", rows)
    report = json_of([str(path.parent)])
    run = report["runs"][0]
    pos, neg = expected_db(rows)
    per = run["per_category"]
    assert [c["id"] for c in per] == CATEGORIES["id"]
    np.testing.assert_allclose(db_list([c["positive_db"] for c in per]), pos, rtol=1e-12)
    np.testing.assert_allclose(db_list([c["negative_db"] for c in per]), neg, rtol=1e-12)
    np.testing.assert_allclose(db_list([c["ratio_db"] for c in per]), pos - neg, rtol=1e-12)
    assert [c["positives"] for c in per] == rows["positive_count"].sum(0).tolist()
    for g, value in expected_groups(pos).items():
        assert run["groups"][g] == pytest.approx(value, rel=1e-12)
    g_all = np.abs(rows["positive_sum"].sum(0)) / rows["positive_count"].sum(0)
    assert run["groups_db_of_mean"]["all"] == pytest.approx(20 * np.log10(g_all.mean()))
    assert run["label"] == "gumbel" and run["loss"] == "gumbel"
    assert run["rows"] == 6 and run["iterations"] == [10, 60]
    assert report["db_scale"] == 20 and report["differences"] == []


def test_db_scale_10_halves_every_value(tmp_path):
    rows = make_rows(1)
    path = write_grad_log(tmp_path / "a.h5", rows)
    r20 = json_of([str(path)])["runs"][0]
    r10 = json_of([str(path), "--db-scale", "10"])["runs"][0]
    pos10, _ = expected_db(rows, scale=10)
    got10 = db_list([c["positive_db"] for c in r10["per_category"]])
    np.testing.assert_allclose(got10, pos10, rtol=1e-12)
    for g in ("all", "r", "c", "f"):
        assert r10["groups"][g] == pytest.approx(r20["groups"][g] / 2, rel=1e-12)


def test_missing_categories_are_null_not_zero(tmp_path):
    rows = make_rows(2, missing=(2,))  # "yak" (rare) never a positive
    path = write_grad_log(tmp_path / "a.h5", rows)
    run = json_of([str(path)])["runs"][0]
    yak = run["per_category"][2]
    assert yak["positives"] == 0 and yak["positive_db"] is None
    assert yak["negative_db"] is not None  # negatives still recorded
    assert run["missing"] == 1 and run["missing_by_group"] == {"all": 1, "r": 1, "c": 0, "f": 0}
    pos, _ = expected_db(rows)
    freq = np.array(CATEGORIES["frequency"])
    # the rare mean is over okapi alone: yak is left out, not counted as 0 (or -inf) dB
    assert run["groups"]["r"] == pytest.approx(pos[(freq == "r") & ~np.isnan(pos)].mean())
    assert run["groups"]["all"] == pytest.approx(np.nanmean(pos))

    comparison = compare_logs([read_grad_log(path)])
    fig = gradient_figure(comparison)
    line = fig.axes[0].get_lines()[0]
    order = np.lexsort((CATEGORIES["id"], -np.array(CATEGORIES["image_count"])))
    np.testing.assert_allclose(line.get_ydata(), pos[order])  # NaN where yak stands: a gap
    assert np.isnan(line.get_ydata()[list(order).index(2)])


def test_differences_to_the_first_run_per_group(tmp_path):
    sig_rows = make_rows(3, missing=(4,))
    gum_rows = make_rows(4, scale=5.0)
    sig = write_grad_log(tmp_path / "sig" / "grads.h5", sig_rows, attrs=default_attrs("sigmoid"))
    gum = write_grad_log(tmp_path / "gum" / "grads.h5", gum_rows)
    report = json_of([str(sig.parent), str(gum.parent)])
    assert [r["label"] for r in report["runs"]] == ["sigmoid", "gumbel"]
    (diff,) = report["differences"]
    assert diff["label"] == "gumbel - sigmoid"
    per_category = expected_db(gum_rows)[0] - expected_db(sig_rows)[0]
    for g, value in expected_groups(per_category).items():
        assert diff["groups"][g] == pytest.approx(value, rel=1e-12)
    assert diff["categories"]["all"] == C - 1  # okapi has no sigmoid positives: not paired

    table = runner.invoke(app, ["grads", str(sig.parent), str(gum.parent)])
    assert table.exit_code == 0, table.stderr
    text = " ".join(table.stdout.split())
    avg, rare = diff["groups"]["all"], diff["groups"]["r"]
    word = "larger" if avg >= 0 else "smaller"
    assert f"gumbel gives positive gradients {abs(avg):.1f} dB {word} than sigmoid on average" in (
        text
    )
    assert f"{abs(rare):.1f} dB" in text and "for rare categories" in text


def test_runs_align_by_category_id(tmp_path):
    rows = make_rows(5)
    perm = np.array([3, 0, 5, 1, 4, 2])
    permuted_rows = {k: (v[:, perm] if v.ndim == 2 else v) for k, v in rows.items()}
    permuted_cats = {k: [v[i] for i in perm] for k, v in CATEGORIES.items()}
    a = write_grad_log(tmp_path / "a.h5", rows)
    b = write_grad_log(tmp_path / "b.h5", permuted_rows, categories=permuted_cats)
    report = json_of(["--label", "first", str(a), str(b), "--label", "second"])
    assert [r["label"] for r in report["runs"]] == ["first", "second"]
    groups = report["differences"][0]["groups"]
    assert all(abs(v) < 1e-9 for v in groups.values())
    assert [c["id"] for c in report["runs"][1]["per_category"]] == CATEGORIES["id"]


def test_epochs_select_rows_by_epoch(tmp_path):
    rows = make_rows(6, num_rows=6, epochs=[0, 0, 1, 1, 2, 2])
    path = write_grad_log(tmp_path / "a.h5", rows)
    epoch = rows["epoch"]
    for spec, keep in (
        ("1:2", epoch == 1),
        ("1:", epoch >= 1),
        (":1", epoch < 1),
        ("2", epoch == 2),
        (":", epoch >= 0),
    ):
        run = json_of([str(path), "--epoch-range", spec])["runs"][0]
        pos, _ = expected_db(rows, keep=keep)
        got = db_list([c["positive_db"] for c in run["per_category"]])
        np.testing.assert_allclose(got, pos, rtol=1e-12, err_msg=spec)
        assert run["rows"] == int(keep.sum())
        assert run["iterations"] == [
            int(rows["iteration"][keep][0]),
            int(rows["iteration"][keep][-1]),
        ]


def test_parse_epochs():
    assert parse_epochs("8:") == EpochRange(8, None)
    assert parse_epochs(":4") == EpochRange(None, 4)
    assert parse_epochs("2:5") == EpochRange(2, 5)
    assert parse_epochs("3") == EpochRange(3, 4)
    assert str(parse_epochs("2:5")) == "2:5"
    for bad in ("a:b", "1:2:3", "5:3", "4:4", "-1:", "", "1.5:"):
        with pytest.raises(InputError):
            parse_epochs(bad)


def test_default_labels_disambiguate_equal_losses(tmp_path):
    a = write_grad_log(tmp_path / "sigma_0.8" / "grads.h5", make_rows(7))
    b = write_grad_log(tmp_path / "sigma_1.2" / "grads.h5", make_rows(8))
    c = write_grad_log(tmp_path / "x.h5", make_rows(9), attrs=default_attrs(loss=""))
    report = json_of([str(a.parent), str(b), str(c)])
    assert [r["label"] for r in report["runs"]] == ["gumbel (sigma_0.8)", "gumbel (sigma_1.2)", "x"]
    same = json_of([str(a), str(a)])
    assert [r["label"] for r in same["runs"]] == ["gumbel", "gumbel (2)"]


def test_rows_sized_but_not_written_are_left_out(tmp_path):
    rows = make_rows(10, num_rows=4)
    path = write_grad_log(tmp_path / "a.h5", rows)
    with h5py.File(path, "a") as f:  # as a live writer between resize and write
        for key in f:
            if key != "categories":
                f[key].resize(5, axis=0)
    log = read_grad_log(path)
    assert log.rows == 4 and log.iterations == (10, 40)
    np.testing.assert_array_equal(log.positive_count, rows["positive_count"].sum(0))


# ----------------------------------------------------------------------------- SWMR and SIGKILL


def _writer_script():
    return (
        textwrap.dedent(inspect.getsource(create_grad_log))
        + textwrap.dedent(inspect.getsource(append_row))
        + textwrap.dedent(
            """
            import json, sys, time
            import numpy as np
            categories, attrs = json.loads(sys.argv[2]), json.loads(sys.argv[3])
            f = create_grad_log(sys.argv[1], categories, attrs, swmr=True, chunk_rows=2)
            C = len(categories["id"])
            for i in range(100000):
                append_row(f, {
                    "positive_sum": -np.full(C, 1.0), "positive_count": np.full(C, 2),
                    "negative_sum": np.full(C, 0.1), "negative_count": np.full(C, 10.0),
                    "iteration": i + 1, "epoch": i // 3,
                })
                f.flush()
                print(i + 1, flush=True)
                time.sleep(0.005)
            """
        )
    )


def test_log_of_a_sigkilled_swmr_writer_is_readable(tmp_path):
    path = tmp_path / "run" / "grads.h5"
    path.parent.mkdir()
    attrs = default_attrs()
    attrs["temperature"] = 1.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _writer_script(),
            str(path),
            json.dumps(CATEGORIES),
            json.dumps(attrs),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    flushed = 0
    try:
        while flushed < 5:
            line = proc.stdout.readline()
            assert line, "the writer stopped before writing rows"
            flushed = int(line)
        # read while the writer is live (SWMR), then kill it mid-run
        live = read_grad_log(path)
        assert live.rows >= 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    log = read_grad_log(tmp_path / "run")
    assert log.rows >= flushed
    # every row is 2 positives summing to -1: g = 0.5 exactly, whatever the number of rows
    np.testing.assert_allclose(log.positive_count, 2 * log.rows)
    np.testing.assert_allclose(np.abs(log.positive_sum) / log.positive_count, 0.5)
    report = json_of([str(tmp_path / "run")])
    assert report["runs"][0]["groups"]["all"] == pytest.approx(20 * math.log10(0.5))

    # a cut copy of the killed file is "truncated" at once (a SWMR open would retry for minutes)
    cut = tmp_path / "cut.h5"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code = (
        "import sys\nfrom gumbel_analysis.analysis.gradients import read_grad_log\n"
        "try:\n    read_grad_log(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cut)], capture_output=True, text=True, timeout=60
    )
    assert "truncated" in out.stdout, out.stdout + out.stderr


# ----------------------------------------------------------------------------- figure


def test_figure_has_one_series_per_run_and_is_written(tmp_path):
    a = write_grad_log(tmp_path / "a.h5", make_rows(11), attrs=default_attrs("sigmoid"))
    b = write_grad_log(tmp_path / "b.h5", make_rows(12, missing=(1,)))
    comparison = compare_logs([read_grad_log(a), read_grad_log(b)], db_scale=10)
    fig = gradient_figure(comparison)
    assert len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert lines[0].get_label().startswith("sigmoid") and "1 missing" in lines[1].get_label()
    assert "10·log10" in fig.axes[0].get_ylabel() and "dB" in fig.axes[0].get_ylabel()
    # categories by training image count, frequent first
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["person", "car", "cup", "lamp", "yak", "okapi"]
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels == {"rare", "common", "frequent"}
    fig3 = gradient_figure(comparison, negatives=True)
    assert len(fig3.axes) == 3 and all(len(ax.get_lines()) >= 2 for ax in fig3.axes)

    out = tmp_path / "fig.png"
    result = runner.invoke(app, ["grads", str(a), str(b), "--plot", str(out), "--negatives"])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "figure written" in result.stdout and "negative" in result.stdout
    svg = tmp_path / "fig.svg"
    assert json_of([str(a), "--plot", str(svg)])["figure"] == str(svg)
    assert svg.read_text().lstrip().startswith("<?xml")


# ----------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path):
    good = write_grad_log(tmp_path / "good" / "grads.h5", make_rows(13))
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:1000])
    random_bytes = tmp_path / "random.h5"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = write_grad_log(tmp_path / "empty.h5", make_rows(14), num_rows=0)
    other_cats = dict(CATEGORIES, id=[1, 2, 3, 5, 7, 11])
    other = write_grad_log(tmp_path / "other.h5", make_rows(15), categories=other_cats)
    fewer = {k: v[:5] for k, v in CATEGORIES.items()}
    fewer_rows = {k: (v[:, :5] if v.ndim == 2 else v) for k, v in make_rows(16).items()}
    fewer_log = write_grad_log(
        tmp_path / "fewer.h5", fewer_rows, categories=fewer, attrs=default_attrs(num_classes=5)
    )
    newer = write_grad_log(
        tmp_path / "newer.h5", make_rows(17), attrs=default_attrs(schema_version=2)
    )
    wrong_count = write_grad_log(
        tmp_path / "wrongc.h5", make_rows(18), attrs=default_attrs(num_classes=7)
    )
    no_epoch = tmp_path / "no_epoch.h5"
    no_epoch.write_bytes(good.read_bytes())
    with h5py.File(no_epoch, "a") as f:
        del f["epoch"]
    (tmp_path / "norun").mkdir()
    g = str(good)
    return {
        "not a gumbel-analysis gradient log": [str(foreign)],
        "truncated": [str(truncated)],
        "not an HDF5 file": [str(random_bytes)],
        "no such run folder": [str(tmp_path / "missing.h5")],
        "has no gradient log": [str(tmp_path / "norun")],
        "has no rows yet": [str(empty)],
        "record different categories": [g, str(other)],
        "cannot be compared": [g, str(fewer_log)],
        "schema version 2": [str(newer)],
        "num_classes = 7": [str(wrong_count)],
        "lacks epoch": [str(no_epoch)],
        "selects no rows": [g, "--epoch-range", "7:"],
        "--epoch-range must look like": [g, "--epochs", "x:y"],  # the old spelling
        "--label was given 1 times for 2 runs": [g, g, "--labels", "only"],
        "--label values must be distinct": [g, g, "--label", "same", "--label", "same"],
        "--db-scale must be 10 or 20": [g, "--db-scale", "3"],
    }


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    cases = _bad_inputs(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for expected, args in cases.items():
        fig = out_dir / "fig.png"
        result = runner.invoke(app, ["grads", *args, "--plot", str(fig)])
        assert result.exit_code == 2, (expected, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (expected, result.stderr)
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in result.stderr + result.stdout
        assert list(out_dir.iterdir()) == [], expected  # no figure, no temporary file


def test_figure_into_missing_folder_reads_nothing(tmp_path, monkeypatch):
    good = write_grad_log(tmp_path / "a.h5", make_rows(19))

    def must_not_read(*args, **kwargs):
        raise AssertionError("read before checking the figure path")

    monkeypatch.setattr(gradmod, "read_grad_log", must_not_read)
    monkeypatch.setattr("gumbel_analysis.cli.grads.read_grad_log", must_not_read)
    result = runner.invoke(app, ["grads", str(good), "--plot", str(tmp_path / "nope" / "f.png")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output folder does not exist: {tmp_path / 'nope'}"
    ]
    assert not (tmp_path / "nope").exists()

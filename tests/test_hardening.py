"""Every case of issue 11's "Found" list: one line on stderr, exit 2, nothing on disk changed;
no NaN shown as a value; run folders that a rerun or --resume accepts."""

import json
import math
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from scipy.special import rel_entr
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.errors import InputError
from gumbel_analysis.spec.config import TrainConfig, load_config_file, resolve

runner = CliRunner()
SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "synthetic", SPEC, progress=False)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(data_dir), "--out", str(out)),
            *("--max-iters", "2", "--epochs", "1", "--grad-every", "1", *FAST),
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def snapshot(*roots):
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def refused(args, fragment, *watch, code=2):
    """Run ``gumbel ARGS``: one line ``error: ...`` holding ``fragment``, exit ``code``, and no
    file created, changed or removed under the working folder or ``watch``."""
    roots = [os.getcwd(), *map(str, watch)]
    before = snapshot(*roots)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert snapshot(*roots) == before
    return lines[0]


def train_args(data_dir, out, *more):
    return ["train", "--data", data_dir, "--out", out, *FAST, *more]


# ----------------------------------------------------------------------------- data lost


@pytest.mark.parametrize("size", ["-1", "0"])
def test_eval_batch_size_below_one_changes_nothing(cwd, run_dir, size):
    results = (run_dir / "results.json").read_bytes()
    refused(["eval", run_dir, "--batch-size", size], "--batch-size must be", run_dir)
    assert (run_dir / "results.json").read_bytes() == results


# ----------------------------------------------------------------------------- silent acceptance


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--max-iters", "0"], "--max-iters must be an integer >= 1, got 0"),
        (["--max-iters", "-1"], "--max-iters must be an integer >= 1, got -1"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0"),
        (["--epochs", "1", "--schedule", "2x"], "--epochs 1 conflicts with --schedule 2x"),
        # tracebacks before:
        (["--loss", "gol", "--lambda", "nan"], "--lambda must be a number in (0, 1]"),
        (["--loss", "gol", "--lambda", "-1"], "--lambda must be a number in (0, 1]"),
        (["--grad-every", "0"], "--grad-every must be an integer >= 1, got 0"),
        (["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
        (["--loss", "nope"], "Invalid value for '--loss'"),
    ],
)
def test_train_options_are_refused_before_anything_is_made(cwd, data_dir, args, fragment):
    out = cwd / "run"
    refused(train_args(data_dir, out, *args), fragment, data_dir)
    assert not out.exists()


def test_lr_message_shows_the_users_value_and_the_batch_of_16(cwd, data_dir):
    line = refused(train_args(data_dir, cwd / "run", "--lr", "-1"), "--lr")
    assert "got -1" in line and "batch of 16" in line and "0.25" not in line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "must hold an object of TrainConfig fields, got a list"),
        ('"str"', "must hold an object of TrainConfig fields, got 'str'"),
        ('{"epochs": "two"}', "--epochs must be an integer >= 1, got 'two'"),
        ('{"lr_steps": 5}', "lr_steps (config key) must be a list of increasing epochs"),
        ('{"base_lr": NaN}', "--lr must be a finite number > 0"),
        ('{"momentum": 1.5}', "momentum (config key) must be"),
        ('{"nonsense": 1}', "unknown configuration keys"),
    ],
)
def test_config_files_of_the_wrong_shape_or_type(cwd, data_dir, text, fragment):
    config = cwd.parent / "config.json"
    config.write_text(text)
    refused(train_args(data_dir, cwd / "run", "--config", config), fragment, data_dir)


def test_config_is_a_folder(cwd, data_dir):
    refused(train_args(data_dir, cwd / "run", "--config", cwd.parent), "is a folder")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--lr", "0.5"], "--lr 0.5 (saved: 0.02)"),
        (["--loss", "sigmoid"], "--loss sigmoid (saved: gumbel)"),
        (["--epochs", "3"], "--epochs 3 (saved: 1)"),
        (["--lr", "0.5", "--seed", "3"], "--lr 0.5 (saved: 0.02); --seed 3 (saved: 0)"),
    ],
)
def test_resume_with_other_options_is_refused_listing_them(cwd, run_dir, args, fragment):
    refused(["train", "--resume", "--out", run_dir, "--no-progress", *args], fragment, run_dir)


def test_resume_applies_the_safe_options(data_dir, tmp_path):
    out = tmp_path / "run"
    base = train_args(data_dir, out, "--max-iters", "1", "--no-eval", "--no-grad-log")
    assert runner.invoke(app, base).exit_code == 0
    result = runner.invoke(
        app, ["train", "--resume", "--out", str(out), "--max-iters", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert ckpt.load_checkpoint(out / "last.pt")["iteration"] == 2
    assert json.loads((out / "config.json").read_text())["max_iters"] == 2
    assert "--max-iters" in runner.invoke(app, ["train", "--help"]).stdout


# ----------------------------------------------------------------------------- tracebacks


def test_checkpoint_naming_an_unknown_loss(cwd, run_dir, tmp_path):
    state = torch.load(run_dir / "model_final.pt", weights_only=False)
    state["config"]["loss"] = "nope"
    bad = tmp_path / "bad" / "model_final.pt"
    bad.parent.mkdir()
    torch.save(state, bad)
    refused(["eval", bad, "--no-progress"], "has an invalid config: unknown loss", bad)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--proposals", "0"], "--proposals must be an integer >= 1"),
        (["--features", "0"], "--features must be an integer >= 1"),
        (["--num-classes", "100000000"], "GiB for the check"),
        (["--temperature", "1e-5"], "--temperature 1e-05 is too small"),
        (["--temperature", "1e308"], "overflows float64"),
    ],
)
def test_init_bias_extremes(cwd, args, fragment):
    refused(["init-bias", *args], fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--clip", "-600", "10"], "use low >= -567.826"),
        (["--sigma", "1e-300"], "or sigma >= 0.005636"),
        (["--clip", "0", "1e308", "--sigma", "0.1"], "high / sigma overflows"),
    ],
)
def test_temperature_extremes(cwd, args, fragment):
    refused(["temperature", *args], fragment)


def test_temperature_at_the_edge_is_finite():
    result = runner.invoke(app, ["temperature", "--clip", "-567", "10", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    # log10 eta(low) = -exp(-low / sigma) / ln 10, finite even where eta(low) underflows to 0
    for row in rows:
        expected = -math.exp(567 / row["sigma"]) / math.log(10)
        assert row["bottom_error_log10"] == pytest.approx(expected, rel=1e-12)


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_path(cwd, data_dir, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(ckpt, "_disk_full", lambda path: True)
    out = cwd / "run"
    result = runner.invoke(app, train_args(data_dir, out, "--max-iters", "1"))
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "No space left on device" in line and line.endswith(str(out / "last.pt"))
    assert not out.exists()  # nothing to resume: the fresh run removed what it wrote


# ----------------------------------------------------------------------------- NaN as a result


def test_kl_dist_with_scores_near_the_float64_maximum(cwd, tmp_path):
    # Two images; image 1 holds category 1, image 2 categories 1 and 2. Both runs score the same
    # pairs, one with 1.7e308, one with 1.0: the distributions p_c = (s_c + eps) / sum differ
    # only through eps, so the KL values are finite and computed here independently.
    ann = {
        "images": [{"id": i, "height": 10, "width": 10} for i in (1, 2)],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f", "image_count": 2, "instance_count": 2},
            {"id": 2, "name": "b", "frequency": "r", "image_count": 1, "instance_count": 1},
        ],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 2, 2], "area": 4}
            for k, (i, c) in enumerate([(1, 1), (2, 2), (2, 1)], start=1)
        ],
    }
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(ann))
    dets = [(1, 1), (1, 2), (2, 1)]
    paths = {}
    for name, score in (("huge", 1.7e308), ("one", 1.0)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(
            json.dumps(
                [
                    {"image_id": i, "category_id": c, "bbox": [0, 0, 1, 1], "score": score}
                    for i, c in dets
                ]
            )
        )
    result = runner.invoke(
        app, ["kl-dist", "--gt", str(gt), str(paths["huge"]), str(paths["one"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    eps = report["eps"]

    def kl_of(score):
        masses = {1: np.array([score, score]), 2: np.array([score, 0.0])}
        targets = {1: np.array([1.0, 0.0]), 2: np.array([0.5, 0.5])}
        out = []
        for image in (1, 2):
            m = masses[image] / score  # in units of the score: exact for this input
            p = (m + eps / score) / (m + eps / score).sum()
            out.append(rel_entr(targets[image], p).sum())
        return float(np.mean(out))

    means = {r["label"]: r["kl_mean"] for r in report["runs"]}
    assert means["huge"] == pytest.approx(kl_of(1.7e308), rel=1e-9)
    assert means["one"] == pytest.approx(kl_of(1.0), rel=1e-9)
    assert all(math.isfinite(v) for v in means.values())
    assert report["closest"] == "one"  # eps matters less for large scores: huge is farther


def test_grads_names_a_non_finite_row(cwd, run_dir, tmp_path):
    log = tmp_path / "nan.h5"
    shutil.copy(run_dir / "grads.h5", log)
    with h5py.File(log, "a") as f:
        rows = f["negative_sum"][:]
        rows[1, 2] = np.nan
        f["negative_sum"][...] = rows
    refused(["grads", log], "negative_sum is not finite (NaN or inf) in row 1 (iteration 2)")
    # --epoch-range can leave the row out, as the message says: not here (one epoch).


def test_eval_of_a_checkpoint_with_nan_weights_is_refused(cwd, run_dir, tmp_path):
    state = torch.load(run_dir / "model_final.pt", weights_only=False)
    key = "roi_heads.box_predictor.cls_score.weight"
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    bad = tmp_path / "nan" / "model_final.pt"
    bad.parent.mkdir()
    torch.save(state, bad)
    refused(["eval", bad, "--no-progress"], f"non-finite weights (NaN or inf) in {key}", bad)


def _edited(data_dir, tmp_path, edit):
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    path = broken / "annotations" / "lvis_v1_train.json"
    data = json.loads(path.read_text())
    edit(broken, data)
    path.write_text(json.dumps(data))
    return broken


def _set(key, value):
    def edit(_, data):
        data["annotations"][3][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_set("bbox", [1.0, float("nan"), 3.0, 4.0]), "annotation 4 has a non-finite"),
        (_set("bbox", [1, 1, -3, 4]), "annotation 4 has a negative bbox width"),
        (_set("area", -1), "annotation 4 has an invalid area"),
        (_set("area", float("inf")), "annotation 4 has an invalid area"),
        (_set("segmentation", [[1, 2, 3]]), "annotation 4 has a malformed polygon"),
        (_set("segmentation", {"counts": "abc"}), "annotation 4 has a malformed RLE"),
        (_set("segmentation", "x"), "annotation 4 has a segmentation that is neither"),
    ],
)
def test_bad_annotations_are_named_by_file_and_id(cwd, data_dir, tmp_path, edit, fragment):
    broken = _edited(data_dir, tmp_path, edit)
    line = refused(train_args(broken, cwd / "run"), fragment, broken)
    assert "lvis_v1_train.json" in line


# ----------------------------------------------------------------------------- run folders


def test_a_kill_during_the_first_checkpoint_then_rerun_or_resume(cwd, data_dir, run_dir):
    # What the kill leaves: the config, a 0-byte temp file of last.pt, no checkpoint.
    out = cwd / "killed"
    out.mkdir()
    shutil.copy(run_dir / "config.json", out / "config.json")
    (out / ".last.pt.k1ll3d.tmp.pt").write_bytes(b"")
    result = runner.invoke(
        app, ["train", "--resume", "--out", str(out), "--no-progress", "--no-eval"]
    )
    assert result.exit_code == 0, result.output
    assert ckpt.load_checkpoint(out / "last.pt")["iteration"] == 2  # from 0, saved max_iters
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_stale_temp_files_do_not_block_a_plain_run(cwd, data_dir):
    out = cwd / "run"
    out.mkdir()
    (out / ".last.pt.abcdef.tmp.pt").write_bytes(b"")
    result = runner.invoke(app, train_args(data_dir, out, "--max-iters", "1", "--no-eval"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "grads.h5",
        "last.pt",
        "metrics.jsonl",
        "model_final.pt",
    ]


def _truncate_images(root, data):
    for image in data["images"]:
        path = root / "images" / image["file_name"]
        path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixels do not


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_image_found_by_a_worker_is_one_short_line(cwd, data_dir, tmp_path, workers):
    broken = _edited(data_dir, tmp_path, _truncate_images)
    out = cwd / "run"
    args = ["train", "--data", broken, "--out", out, *FAST, "--workers", workers]
    line = refused(args, "cannot read image", broken)
    assert str(broken / "images" / "train") in line and "(image " in line
    assert len(line) < 200
    assert not out.exists()  # set-up failed: no folder left, a plain rerun is accepted


def test_a_corrupt_image_header_is_refused_at_load(cwd, data_dir, tmp_path):
    def garbage(root, data):
        (root / "images" / data["images"][2]["file_name"]).write_bytes(b"not an image")

    broken = _edited(data_dir, tmp_path, garbage)
    refused(train_args(broken, cwd / "run"), "cannot identify image file", broken)


# ----------------------------------------------------------------------------- messages


def test_a_folder_where_a_file_is_expected_is_named_as_such(cwd, data_dir, run_dir, tmp_path):
    folder = tmp_path / "folder.json"
    folder.mkdir()
    refused(["kl-dist", "--gt", folder, run_dir / "results.json"], "is a folder, not a file")
    refused(train_args(data_dir, cwd / "run", "--config", folder), "is a folder")


def test_an_unwritable_output_folder_is_named_by_the_users_path(cwd, data_dir, monkeypatch):
    # As root every folder is writable: make the probe fail as a read-only folder would.
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")) + "/.tmpXYZ")

    out = cwd / "ro"
    out.mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = refused(train_args(data_dir, out), f"run folder {out} is not writable")
    assert ".tmp" not in line


def test_config_validation_is_one_place(tmp_path):
    # The library sees the same checks as the command line.
    with pytest.raises(InputError, match="--workers must be an integer >= 0"):
        TrainConfig(workers=-1)
    with pytest.raises(InputError, match="must hold an object"):
        TrainConfig.from_dict([1, 2])
    path = tmp_path / "c.json"
    path.write_text('"x"')
    with pytest.raises(InputError, match="must hold an object"):
        load_config_file(path)
    cfg = resolve(TrainConfig(batch_size=4, base_lr=0.02))
    assert cfg.lr == pytest.approx(0.005)  # recorded in config.json as lr


# ----------------------------------------------------------------------------- one name each


def test_old_spellings_are_hidden_aliases(tmp_path, run_dir):
    for command, new, old in (
        ("temperature", "--plot", "--out"),
        ("grads", "--epoch-range", "--epochs"),
        ("grads", "--label", "--labels"),
        ("kl-dist", "--label", "--labels"),
        ("make-data", "--train-images", "--images"),
    ):
        help_text = runner.invoke(app, [command, "--help"]).stdout
        assert new in help_text
        assert f"{old} " not in help_text.replace(f"{new} ", "")
    a = runner.invoke(app, ["grads", str(run_dir), "--epochs", "0:", "--json"])
    b = runner.invoke(app, ["grads", str(run_dir), "--epoch-range", "0:", "--json"])
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout


def test_make_data_images_is_the_old_spelling_of_train_images(tmp_path):
    small = ["--classes", "4", "--val-images", "4", "--val-min-images", "1", "--size", "32"]
    old = runner.invoke(app, ["make-data", str(tmp_path / "a"), "--images", "20", *small, "--json"])
    new = runner.invoke(
        app, ["make-data", str(tmp_path / "b"), "--train-images", "20", *small, "--json"]
    )
    assert old.exit_code == new.exit_code == 0, old.output + new.output
    assert json.loads(old.stdout)["key"] == json.loads(new.stdout)["key"]
    assert json.loads(new.stdout)["spec"]["train_images"] == 20
    both = runner.invoke(
        app, ["make-data", str(tmp_path / "c"), "--images", "20", "--train-images", "30", *small]
    )
    assert both.exit_code == 2 and "--train-images once" in both.stderr
    assert not (tmp_path / "c").exists()
    # also when --train-images is given at its default value
    both = runner.invoke(
        app, ["make-data", str(tmp_path / "c"), "--images", "30", "--train-images", "600", *small]
    )
    assert both.exit_code == 2 and "--train-images once" in both.stderr
    assert not (tmp_path / "c").exists()


def test_label_may_come_before_the_inputs(run_dir):
    result = runner.invoke(
        app,
        ["grads", "--label", "first", str(run_dir), "--label", "second", str(run_dir), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in json.loads(result.stdout)["runs"]] == ["first", "second"]


def test_effective_lr_is_printed_and_recorded(run_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, train_args(data_dir, out, "--max-iters", "1", "--no-eval", "--lr", "0.04")
    )
    assert result.exit_code == 0, result.output
    assert "learning rate 0.01 = --lr 0.04 x 4 images x 1 process(es) / 16" in result.stderr
    assert json.loads((out / "config.json").read_text())["lr"] == pytest.approx(0.01)


def test_kl_dist_with_an_eps_below_float64_relative_to_the_scores(tmp_path):
    # p_c = eps / (S + C eps) with eps = 1e-300 and S = 1.7e308 is below the smallest float64:
    # the KL is still finite, computed in logs; checked here with exact decimal arithmetic.
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    ann = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "categories": [
            {"id": c, "name": n, "frequency": "f", "image_count": 1, "instance_count": 1}
            for c, n in ((1, "a"), (2, "b"))
        ],
        "annotations": [
            {"id": c, "image_id": 1, "category_id": c, "bbox": [0, 0, 2, 2], "area": 4}
            for c in (1, 2)
        ],
    }
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(ann))
    res = tmp_path / "r.json"
    res.write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.7e308}])
    )
    result = runner.invoke(app, ["kl-dist", "--gt", str(gt), str(res), "--eps", "1e-300", "--json"])
    assert result.exit_code == 0, result.output
    s, eps = Decimal("1.7e308"), Decimal("1e-300")
    p1, p2 = (s + eps) / (s + 2 * eps), eps / (s + 2 * eps)
    half = Decimal("0.5")
    expected = half * (half / p1).ln() + half * (half / p2).ln()
    got = json.loads(result.stdout)["runs"][0]["kl_mean"]
    assert got == pytest.approx(float(expected), rel=1e-12)

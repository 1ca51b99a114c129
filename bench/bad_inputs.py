"""A sweep of bad inputs across the commands: is each answered as promised?

Promise (the developers' guide): one line ``error: ...`` on stderr, exit status 2, no traceback,
and nothing created or changed on disk (the working folder and every input folder are compared
file by file: names, sizes and modification times). A few inputs are not bad but extreme (huge
scores, huge temperatures): those must exit 0 with no NaN/inf shown as a value, or be refused as
above.

Every case runs in-process through Typer's CliRunner in a fresh working folder, against shared
fixtures (a small synthetic dataset, a short trained run, its results and gradient log, broken
copies of each; a second short run of another loss; broken run folders for table and --resume;
a reproduce folder whose fig2 runs lack grads.h5). Cases that could hang or start a long
training (reproduce, table over a symlink loop) run in a subprocess under a time limit: a hang is
a finding. Prints one line per case that is not answered as promised, and the counts.

Commands: train, eval, init-bias, temperature, kl-dist, grads, make-data, table, sweep,
reproduce (--only COMMAND runs one command's cases; the fixtures are always made).

    nice .venv/bin/python bench/bad_inputs.py [--keep DIR] [--only COMMAND]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(classes=5, train_images=20, val_images=4, size=64, seed=2)
FAST = ["--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]
SHORT = ["--max-iters", "2", "--epochs", "1"]
DEEP = 100_000  # JSON/TOML nesting depth of the "nested too deeply" inputs
NESTED = "[" * DEEP + "]" * DEEP
CUDA = torch.cuda.is_available()  # --device cuda is a bad input only without it


@dataclass
class Case:
    command: str
    args: list[str]
    expect: str = "refuse"  # refuse: exit 2, one line; finite: exit 0 without NaN/inf, or refuse
    note: str = ""
    watch: list[Path] = field(default_factory=list)
    # Seconds: run in a subprocess (python -m gumbel_analysis) under this limit, so that a hang
    # (or a command that starts a long training instead of refusing) is a finding, not a hang of
    # the bench. None: in-process through CliRunner.
    timeout: float | None = None


@dataclass
class Ran:
    """A subprocess's answer, read by judge() as a CliRunner result."""

    exit_code: int
    stdout: str
    stderr: str
    hang: bool = False
    exception: BaseException | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_subprocess(case: Case, work: Path) -> Ran:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gumbel_analysis", *case.args],
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends it and its workers
    )
    try:
        out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Ran(-9, out, err, hang=True)
    return Ran(proc.returncode, out, err)


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for root in paths:
        if root.is_file():
            st = root.stat()
            out[str(root)] = (st.st_size, st.st_mtime_ns)
            continue
        if not root.exists():
            out[str(root)] = (-1, -1)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


# ----------------------------------------------------------------------------- fixtures


def edit_json(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    path = dst / "annotations" / "lvis_v1_train.json"
    data = json.loads(path.read_text())
    edit(dst, data)
    path.write_text(json.dumps(data))
    return dst


def fixtures(root: Path) -> dict[str, Path]:
    runner = CliRunner()
    fx: dict[str, Path] = {}
    root.mkdir(parents=True, exist_ok=True)
    data = make_synthetic(root / "data", SPEC, progress=False)
    fx["data"] = data
    run = root / "run"
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(data), "--out", str(run)),
            *("--max-iters", "2", "--epochs", "1", "--grad-every", "1", *FAST),
        ],
    )
    assert result.exit_code == 0, result.output
    fx["run"] = run
    fx["ckpt"] = run / "model_final.pt"
    fx["results"] = run / "results.json"
    fx["gt"] = data / "annotations" / "lvis_v1_val.json"
    fx["grads"] = run / "grads.h5"

    def nan_box(_, d):
        d["annotations"][0]["bbox"] = [float("nan"), 1, 2, 3]

    def neg_box(_, d):
        d["annotations"][0]["bbox"] = [1, 1, -2, 3]

    def str_box(_, d):
        d["annotations"][0]["bbox"] = ["a", 1, 2, 3]

    def bad_area(_, d):
        d["annotations"][0]["area"] = -5

    def nan_area(_, d):
        d["annotations"][0]["area"] = float("nan")

    def bad_poly(_, d):
        d["annotations"][0]["segmentation"] = [[1, 2, 3]]

    def nan_poly(_, d):
        d["annotations"][0]["segmentation"] = [[1, 2, float("nan"), 4, 5, 6]]

    def bad_rle(_, d):
        d["annotations"][0]["segmentation"] = {"counts": "x"}

    def seg_number(_, d):
        d["annotations"][0]["segmentation"] = 5

    def corrupt_image(root_, d):  # every training image: the first batch meets one
        for im in d["images"]:
            (root_ / "images" / im["file_name"]).write_bytes(b"not a png at all")

    def truncated_image(root_, d):  # a valid header, the pixels cut: found by a loader worker
        for im in d["images"]:
            path = root_ / "images" / im["file_name"]
            path.write_bytes(path.read_bytes()[:60])

    def missing_image(root_, d):
        (root_ / "images" / d["images"][0]["file_name"]).unlink()

    def image_is_folder(root_, d):
        p = root_ / "images" / d["images"][0]["file_name"]
        p.unlink()
        p.mkdir()

    def unknown_category(_, d):
        d["annotations"][0]["category_id"] = 999

    def unknown_image(_, d):
        d["annotations"][0]["image_id"] = 999999

    def not_lvis(_, d):
        d.clear()
        d["hello"] = 1

    def no_images(_, d):
        d["images"], d["annotations"] = [], []

    def no_frequency(_, d):
        del d["categories"][0]["frequency"]

    def wrong_size(_, d):
        for im in d["images"]:
            im["height"] = 999

    for edit in (
        nan_box,
        neg_box,
        str_box,
        bad_area,
        nan_area,
        bad_poly,
        nan_poly,
        bad_rle,
        seg_number,
        corrupt_image,
        truncated_image,
        missing_image,
        image_is_folder,
        unknown_category,
        unknown_image,
        not_lvis,
        no_images,
        no_frequency,
        wrong_size,
    ):
        fx[f"data_{edit.__name__}"] = edit_json(data, root / f"data_{edit.__name__}", edit)
    corrupt_val = root / "data_corrupt_val"
    shutil.copytree(data, corrupt_val)
    val = json.loads((corrupt_val / "annotations" / "lvis_v1_val.json").read_text())
    (corrupt_val / "images" / val["images"][0]["file_name"]).write_bytes(b"\x89PNG broken")
    fx["data_corrupt_val"] = corrupt_val
    (root / "data_truncated").mkdir()
    shutil.copytree(data / "images", root / "data_truncated" / "images")
    (root / "data_truncated" / "annotations").mkdir()
    text = (data / "annotations" / "lvis_v1_train.json").read_text()
    (root / "data_truncated" / "annotations" / "lvis_v1_train.json").write_text(text[:500])
    shutil.copy(fx["gt"], root / "data_truncated" / "annotations" / "lvis_v1_val.json")
    fx["data_truncated"] = root / "data_truncated"

    # configuration files
    cfgs = {
        "cfg_list": "[1, 2]",
        "cfg_str": '"str"',
        "cfg_epochs_str": '{"epochs": "two"}',
        "cfg_lr_steps_int": '{"lr_steps": 5}',
        "cfg_lr_steps_desc": '{"lr_steps": [11, 8]}',
        "cfg_unknown": '{"bogus": 1}',
        "cfg_momentum": '{"momentum": 2}',
        "cfg_hflip": '{"hflip": 1.5}',
        "cfg_warmup_factor": '{"warmup_factor": 0}',
        "cfg_rfs": '{"rfs_threshold": 0}',
        "cfg_wd": '{"weight_decay": -1}',
        "cfg_lr_nan": '{"base_lr": NaN}',
        "cfg_bool_epochs": '{"epochs": true}',
        "cfg_null_preset": '{"preset": null}',
        "cfg_log_every": '{"log_every": 0}',
        "cfg_bad_json": "{not json",
        "cfg_amp_str": '{"amp": "yes"}',
        "cfg_extra_list": '{"extra": [1]}',
        "cfg_warmup_neg": '{"warmup_iters": -3}',
        "cfg_float_epochs": '{"epochs": 2.5}',
        "cfg_deep": '{"epochs": ' + NESTED + "}",
        "cfg_loss_options_int": '{"loss_options": 5}',
        "cfg_loss_options_list": '{"loss_options": [1]}',
        "cfg_loss_options_unknown": '{"loss_options": {"bogus": 1}}',
        "cfg_loss_options_temp_str": '{"loss_options": {"temperature": "hot"}}',
        "cfg_loss_options_other_loss": '{"loss": "sigmoid", "loss_options": {"temperature": 0.5}}',
        "cfg_unknown_nested": '{"bogus": {"a": [1, 2]}}',
    }
    tomls = {
        "cfg_toml_deep": "epochs = " + NESTED,
        "cfg_toml_unknown": "bogus = 1",
        "cfg_toml_type": 'epochs = "two"',
        "cfg_toml_inf": "base_lr = inf",
        "cfg_toml_nan_temp": "[loss_options]\ntemperature = nan",
        "cfg_toml_loss_options_str": 'loss_options = "x"',
        "cfg_toml_loss_options_array": "loss_options = [1, 2]",
        "cfg_toml_inline_table": "epochs = {a = 1}",
        "cfg_toml_date": "epochs = 1979-05-27",
        "cfg_toml_unclosed": "[loss_options\ntemperature = 1",
    }
    for name, text in tomls.items():
        (root / f"{name}.toml").write_text(text)
        fx[name] = root / f"{name}.toml"
    (root / "cfg_toml_binary.toml").write_bytes(b"\xff\xfe\x00 = 1")
    fx["cfg_toml_binary"] = root / "cfg_toml_binary.toml"
    for name, text in cfgs.items():
        (root / f"{name}.json").write_text(text)
        fx[name] = root / f"{name}.json"
    (root / "cfg_bad.toml").write_text("epochs = = 3")
    fx["cfg_bad_toml"] = root / "cfg_bad.toml"
    (root / "cfg_toml_range.toml").write_text("epochs = -3")
    fx["cfg_toml_range"] = root / "cfg_toml_range.toml"

    # checkpoints
    state = torch.load(fx["ckpt"], weights_only=False)
    nan_state = {**state, "model": {k: v.clone() for k, v in state["model"].items()}}
    key = next(k for k, v in nan_state["model"].items() if v.is_floating_point())
    nan_state["model"][key].fill_(float("nan"))
    (root / "nan_run").mkdir()
    torch.save(nan_state, root / "nan_run" / "model_final.pt")
    fx["ckpt_nan"] = root / "nan_run" / "model_final.pt"
    bad_loss = {**state, "config": {**state["config"], "loss": "nope"}}
    (root / "badloss_run").mkdir()
    torch.save(bad_loss, root / "badloss_run" / "model_final.pt")
    fx["ckpt_badloss"] = root / "badloss_run" / "model_final.pt"
    (root / "garbage.pt").write_bytes(b"\0" * 64)
    fx["ckpt_garbage"] = root / "garbage.pt"
    torch.save({"a": 1}, root / "foreign.pt")
    fx["ckpt_foreign"] = root / "foreign.pt"
    (root / "empty_dir").mkdir()
    fx["empty_dir"] = root / "empty_dir"
    (root / "a_file.txt").write_text("x")
    fx["file"] = root / "a_file.txt"

    # results files
    huge = [dict(r, score=1.7e308) for r in json.loads(fx["results"].read_text())]
    (root / "huge.json").write_text(json.dumps(huge))
    fx["results_huge"] = root / "huge.json"
    (root / "results_not_list.json").write_text('{"a": 1}')
    fx["results_not_list"] = root / "results_not_list.json"
    (root / "results_trunc.json").write_text(fx["results"].read_text()[:50])
    fx["results_trunc"] = root / "results_trunc.json"
    bad = json.loads(fx["results"].read_text())
    bad[0]["score"] = "high"
    (root / "results_str_score.json").write_text(json.dumps(bad))
    fx["results_str_score"] = root / "results_str_score.json"
    bad = json.loads(fx["results"].read_text())
    bad[0]["category_id"] = 999
    (root / "results_bad_cat.json").write_text(json.dumps(bad))
    fx["results_bad_cat"] = root / "results_bad_cat.json"
    nan = json.loads(fx["results"].read_text())
    nan[0]["score"] = float("nan")
    (root / "results_nan.json").write_text(json.dumps(nan))
    fx["results_nan"] = root / "results_nan.json"

    # gradient logs
    shutil.copy(fx["grads"], root / "nan_grads.h5")
    with h5py.File(root / "nan_grads.h5", "a") as f:
        block = f["positive_sum"][:]
        block[0, :] = np.nan
        f["positive_sum"][...] = block
    fx["grads_nan"] = root / "nan_grads.h5"
    (root / "not.h5").write_bytes(b"hello")
    fx["grads_garbage"] = root / "not.h5"
    with h5py.File(root / "foreign.h5", "w") as f:
        f["x"] = [1]
    fx["grads_foreign"] = root / "foreign.h5"
    # a run folder whose last.pt write was killed: only a 0-byte temp file and config.json
    killed = root / "killed"
    killed.mkdir()
    shutil.copy(run / "config.json", killed / "config.json")
    (killed / ".last.pt.abc123.tmp.pt").write_bytes(b"")
    fx["killed"] = killed
    newer_fixtures(root, fx, runner)
    return fx


def run_folder(dst: Path, src: Path, config: str | None = None, metrics: str | None = None) -> Path:
    """A finished run folder as gumbel table reads it: src's config.json and metrics.json (or the
    texts given), nothing else."""
    dst.mkdir(parents=True)
    for name, text in (("config.json", config), ("metrics.json", metrics)):
        if text is None:
            shutil.copy(src / name, dst / name)
        elif text != "-":  # "-": leave the file out
            (dst / name).write_text(text)
    return dst


def newer_fixtures(root: Path, fx: dict[str, Path], runner: CliRunner) -> None:
    """Fixtures of table, sweep, reproduce, eval of a results file and train --resume."""
    data, run = fx["data"], fx["run"]
    # A second tiny run, of another loss: its last.pt is another configuration's checkpoint.
    sig = root / "run_sigmoid"
    result = runner.invoke(
        app,
        ["train", "--data", str(data), "--out", str(sig), "--loss", "sigmoid", *SHORT, *FAST],
    )
    assert result.exit_code == 0, result.output
    fx["run_sigmoid"] = sig

    # ---- table: run folders with broken config.json / metrics.json
    metrics = json.loads((run / "metrics.json").read_text())
    tbl = root / "table"
    broken = {
        "tbl_bad_config": ("{not json", None),
        "tbl_config_list": ("[1]", None),
        "tbl_deep_config": ('{"loss": ' + NESTED + "}", None),
        "tbl_bad_metrics": (None, "{not json"),
        "tbl_metrics_list": (None, "[1]"),
        "tbl_ap_str": (None, json.dumps({**metrics, "AP": "high"})),
        "tbl_ap_list": (None, json.dumps({**metrics, "AP": [1, 2]})),
        "tbl_ap_bool": (None, json.dumps({**metrics, "AP": True})),
        "tbl_ap_dict": (None, json.dumps({**metrics, "AP": {"a": 1}})),
        "tbl_deep_metrics": (None, '{"AP": ' + NESTED + "}"),
        "tbl_binary_metrics": (None, "x"),
    }
    for name, (config, text) in broken.items():
        fx[name] = run_folder(tbl / name, run, config, text)
    (fx["tbl_binary_metrics"] / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
    fx["tbl_ap_nan"] = run_folder(
        tbl / "ap_nan", run, None, json.dumps({**metrics, "AP": math.nan})
    )
    fx["tbl_unfinished"] = run_folder(tbl / "unfinished", run, None, "-")
    two = tbl / "two_configs"
    run_folder(two / "gumbel", run)
    run_folder(two / "sigmoid", sig)
    fx["tbl_two_configs"] = two
    fx["tbl_other"] = run_folder(tbl / "other", sig)
    # A tree with symlinks back to its own top: one link (a walk of 40 levels, the kernel's
    # limit), and two (2**40 paths to walk unless the walk stops at a folder it has seen).
    for links in (1, 2):
        top = tbl / f"loop{links}"
        run_folder(top / "a", run)
        (top / "sub").mkdir()
        for i in range(links):
            (top / "sub" / f"up{i}").symlink_to("..", target_is_directory=True)
        fx[f"tbl_loop{links}"] = top

    # ---- sweep: a sweep folder whose t1-s0 holds a run of another configuration
    from gumbel_analysis.experiments.sweep import run_name

    fx["sweep_other"] = root / "sweep_other"
    run_folder(fx["sweep_other"] / run_name(1.0, 0), sig)

    # ---- eval of a results file
    (root / "results_deep.json").write_text(NESTED)
    fx["results_deep"] = root / "results_deep.json"
    (root / "results_text.json").write_text("hello")
    fx["results_text"] = root / "results_text.json"
    (root / "results_empty.json").write_text("[]")
    fx["results_empty"] = root / "results_empty.json"
    bad = json.loads(fx["results"].read_text())
    bad[0]["score"] = math.inf
    (root / "results_inf.json").write_text(json.dumps(bad))
    fx["results_inf"] = root / "results_inf.json"
    (root / "gt_deep.json").write_text('{"info": ' + NESTED + "}")  # a field read as it is
    fx["gt_deep"] = root / "gt_deep.json"
    fx["eval_out_run"] = run_folder(root / "eval_out_run", run)  # --out RUN: a finished run

    # ---- train --resume
    fx["resume_corrupt"] = run_folder(root / "resume" / "corrupt", run, "{not json", "-")
    fx["resume_deep"] = run_folder(root / "resume" / "deep", run, '{"a": ' + NESTED + "}", "-")
    fx["resume_list"] = run_folder(root / "resume" / "list", run, "[1]", "-")
    foreign = root / "resume" / "foreign_ckpt"  # a gumbel run folder with a sigmoid run's last.pt
    shutil.copytree(run, foreign)
    shutil.copy(sig / "last.pt", foreign / "last.pt")
    fx["resume_foreign_ckpt"] = foreign
    garbage = root / "resume" / "garbage_ckpt"
    shutil.copytree(run, garbage)
    (garbage / "last.pt").write_bytes(b"\0" * 64)
    fx["resume_garbage_ckpt"] = garbage
    fx["resume_copy"] = root / "resume" / "copy"  # the options-differ cases, apart from run
    shutil.copytree(run, fx["resume_copy"])
    (root / "resume_base_lr.json").write_text('{"base_lr": 0.5}')
    fx["resume_cfg"] = root / "resume_base_lr.json"

    # ---- reproduce --only fig2: its two runs finished (config.json and metrics.json as a
    # finished run leaves them) but without grads.h5
    from gumbel_analysis.experiments import reproduce as rep
    from gumbel_analysis.spec.config import TrainConfig, resolve

    repro = root / "repro_fig2"
    plan = rep.plan_reproduce(repro, ["fig2"], 1)  # makes repro/data, the benchmark
    for planned in plan.runs:
        config = resolve(TrainConfig.from_dict(planned.run.values)).to_dict()
        run_folder(planned.run.path, run, json.dumps(config, indent=2), None)
    again = rep.plan_reproduce(repro, ["fig2"], 1)
    assert all(p.run.action == "skip" for p in again.runs), [p.run.action for p in again.runs]
    fx["repro_fig2"] = repro


# ----------------------------------------------------------------------------- cases


def cases(fx: dict[str, Path], work: Path) -> list[Case]:
    d, run = str(fx["data"]), str(fx["run"])
    gt, res, grads = str(fx["gt"]), str(fx["results"]), str(fx["grads"])
    out = str(work / "new_run")
    c: list[Case] = []

    def train(*args, expect="refuse", watch=()):
        c.append(
            Case("train", ["train", "--data", d, "--out", out, *FAST, *args], expect, "", [*watch])
        )

    # ---- train: numbers
    for opt, values in {
        "--lr": ["nan", "inf", "-inf", "-1", "0"],
        "--epochs": ["0", "-1"],
        "--max-iters": ["0", "-1"],
        "--checkpoint-every": ["-1", "-5"],
        "--workers": ["-1"],
        "--grad-every": ["0", "-1"],
        "--batch-size": ["0", "-2"],
        "--lambda": ["nan", "-1", "0", "inf"],
        "--temperature": ["nan", "0", "-1", "inf"],
        "--seed": ["-1", "99999999999"],
    }.items():
        for v in values:
            train(opt, v)
    for args in (
        ["--epochs", "1", "--schedule", "2x"],
        ["--epochs", "24", "--schedule", "1x"],
        ["--schedule", "3x"],
        ["--loss", "nope"],
        ["--preset", "huge"],
        ["--sampler", "uniform"],
        ["--device", "tpu"],
        ["--device", "cuda"],
        ["--gumbel-mode", "fast"],
        ["--drop-variant", "x"],
        ["--weights", str(work / "missing.pth")],
        ["--weights", str(fx["empty_dir"])],
        ["--weights", str(fx["file"])],
        ["--epochs", "two"],
        ["--lr", "abc"],
    ):
        train(*args)
    # ---- train: configuration files
    for name in [k for k in fx if k.startswith("cfg_")]:
        train("--config", str(fx[name]))
    train("--config", str(work / "missing.json"))
    train("--config", str(fx["empty_dir"]))
    # ---- train: data
    for name in [k for k in fx if k.startswith("data_")]:
        c.append(
            Case(
                "train",
                ["train", "--data", str(fx[name]), "--out", out, *FAST, "--max-iters", "2"],
                "refuse",
                name,
                [fx[name]],
            )
        )
    workers = [a if a != "0" else "2" for a in FAST]  # the same, read by two loader workers
    c.append(
        Case(
            "train",
            ["train", "--data", str(fx["data_truncated_image"]), "--out", out, *workers],
            note="truncated image, 2 workers",
        )
    )
    c.append(Case("train", ["train", "--data", str(work / "nowhere"), "--out", out, *FAST]))
    c.append(Case("train", ["train", "--data", str(fx["file"]), "--out", out, *FAST]))
    c.append(Case("train", ["train", "--data", str(fx["empty_dir"]), "--out", out, *FAST]))
    # ---- train: run folders and --resume
    c.append(Case("train", ["train", "--data", d, "--out", run, *FAST], watch=[fx["run"]]))
    c.append(Case("train", ["train", "--data", d, "--out", str(fx["file"]), *FAST]))
    c.append(Case("train", ["train", "--data", d, "--out", str(fx["file"]) + "/sub", *FAST]))
    c.append(Case("train", ["train", "--resume", *FAST]))
    c.append(Case("train", ["train", "--resume", "--out", str(work / "none"), *FAST]))
    c.append(Case("train", ["train", "--resume", "--out", str(fx["empty_dir"]), *FAST]))
    for args in (
        ["--lr", "0.5"],
        ["--loss", "sigmoid"],
        ["--epochs", "3"],
        ["--seed", "5"],
        ["--batch-size", "2"],
        ["--sampler", "rfs"],
    ):
        c.append(
            Case(
                "train",
                ["train", "--resume", "--out", run, "--no-progress", *args],
                watch=[fx["run"]],
            )
        )
    c.append(Case("train", ["train", "--resume", "--out", run, "--lr", "nan"], watch=[fx["run"]]))
    c.append(
        Case(
            "train",
            ["train", "--resume", "--out", str(fx["ckpt_garbage"].parent / "garbage_run")],
        )
    )

    # ---- eval
    def ev(*args, watch=()):
        c.append(Case("eval", ["eval", *args, "--no-progress"], watch=[fx["run"], *watch]))

    ev(run, "--batch-size", "-1")
    ev(run, "--batch-size", "0")
    ev(str(work / "missing"))
    ev(str(fx["empty_dir"]))
    ev(str(fx["file"]))
    ev(str(fx["ckpt_garbage"]))
    ev(str(fx["ckpt_foreign"]))
    ev(str(fx["ckpt_nan"]), watch=[fx["ckpt_nan"].parent])
    ev(str(fx["ckpt_badloss"]), watch=[fx["ckpt_badloss"].parent])
    ev(run, "--device", "tpu")
    ev(run, "--device", "cuda")
    ev(run, "--data", str(work / "missing"))
    ev(run, "--data", str(fx["file"]))
    ev(run, "--data", str(fx["data_not_lvis"]))
    ev(run, "--data", str(fx["data_corrupt_val"]))

    # ---- init-bias
    for args in (
        ["--num-classes", "0"],
        ["--num-classes", "1"],
        ["--num-classes", "-5"],
        ["--num-classes", "100000000"],
        ["--num-classes", "x"],
        ["--temperature", "0"],
        ["--temperature", "-1"],
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--temperature", "1e-300"],
        ["--temperature", "1e-5"],
        ["--temperature", "1e308"],
        ["--proposals", "0"],
        ["--proposals", "-1"],
        ["--features", "0"],
        ["--features", "-3"],
    ):
        c.append(Case("init-bias", ["init-bias", *args]))
    c.append(Case("init-bias", ["init-bias", "--temperature", "1e300"], "finite"))
    c.append(Case("init-bias", ["init-bias", "--num-classes", "2", "--json"], "finite"))

    # ---- temperature
    fig = str(work / "fig.png")
    for args in (
        ["--sigma", "0"],
        ["--sigma", "-1"],
        ["--sigma", "nan"],
        ["--sigma", "inf"],
        ["--sigma", "1e-300"],
        ["--clip", "10", "-4"],
        ["--clip", "nan", "1"],
        ["--clip", "-4", "inf"],
        ["--clip", "-1e308", "1"],
        ["--clip", "-600", "10"],
        ["--clip", "0", "1e308", "--sigma", "0.1"],
        ["--clip", "3", "3"],
        ["--plot", str(work / "fig.jpg")],
        ["--plot", str(work / "missing" / "fig.png")],
        ["--plot", str(fx["empty_dir"])],
        ["--out", str(work / "fig.gif")],
        ["--plot", fig, "--out", fig],
        ["--sigma", "x"],
    ):
        c.append(Case("temperature", ["temperature", *args]))
    c.append(Case("temperature", ["temperature", "--sigma", "1e300", "--json"], "finite"))
    c.append(Case("temperature", ["temperature", "--clip", "-567", "10", "--json"], "finite"))

    # ---- kl-dist
    def kl(*args, expect="refuse"):
        c.append(Case("kl-dist", ["kl-dist", *args], expect))

    kl("--gt", str(work / "missing.json"), res)
    kl("--gt", str(fx["empty_dir"]), res)
    kl("--gt", str(fx["file"]), res)
    kl("--gt", str(fx["data_not_lvis"] / "annotations" / "lvis_v1_train.json"), res)
    kl("--gt", gt, str(work / "missing.json"))
    kl("--gt", gt, str(fx["empty_dir"]))
    kl("--gt", gt, str(fx["results_not_list"]))
    kl("--gt", gt, str(fx["results_trunc"]))
    kl("--gt", gt, str(fx["results_str_score"]))
    kl("--gt", gt, str(fx["results_nan"]))
    for args in (
        ["--eps", "0"],
        ["--eps", "-1"],
        ["--eps", "nan"],
        ["--base", "3"],
        ["--score-threshold", "nan"],
        ["--top-k", "-1"],
        ["--num-images", "-1"],
        ["--images", "99999999"],
        ["--label", "a", "--label", "b"],
        ["--workers", "0"],
        ["--plot", str(work / "k.jpg")],
        ["--plot", str(work / "nowhere" / "k.png")],
        ["--image-root", str(work / "nowhere")],
        ["--images", "1", "--num-images", "3"],
    ):
        kl("--gt", gt, res, *args)
    kl("--gt", gt, res, res, "--label", "same", "--label", "same")
    kl("--gt", gt, str(fx["results_huge"]), res, "--json", expect="finite")

    # ---- grads
    def gr(*args, expect="refuse"):
        c.append(Case("grads", ["grads", *args], expect))

    gr(str(work / "missing"))
    gr(str(fx["empty_dir"]))
    gr(str(fx["file"]))
    gr(str(fx["grads_garbage"]))
    gr(str(fx["grads_foreign"]))
    gr(str(fx["grads_nan"]))
    for args in (
        ["--epoch-range", "x:y"],
        ["--epoch-range", "5:2"],
        ["--epoch-range", "-1:"],
        ["--epoch-range", "7:"],
        ["--epochs", "1.5"],
        ["--epoch-range", "0:", "--epochs", "0:"],
        ["--db-scale", "5"],
        ["--label", "a", "--label", "b"],
        ["--plot", str(work / "g.bmp")],
        ["--plot", str(work / "nowhere" / "g.png")],
    ):
        gr(grads, *args)
    gr(grads, grads, "--label", "same", "--label", "same")

    # ---- make-data
    md = str(work / "made")
    for args in (
        ["--classes", "0"],
        ["--classes", "-1"],
        ["--classes", "2"],
        ["--images", "0"],
        ["--images", "-5"],
        ["--val-images", "0"],
        ["--val-images", "-1"],
        ["--size", "0"],
        ["--size", "8"],
        ["--size", "100000"],
        ["--seed", "-1"],
        ["--classes", "x"],
    ):
        c.append(Case("make-data", ["make-data", md, *args]))
    c.append(Case("make-data", ["make-data", str(fx["file"])]))
    c.append(Case("make-data", ["make-data", str(fx["run"])], watch=[fx["run"]]))
    c.append(Case("make-data", ["make-data", str(work / "no" / "parent")]))

    # ---- train --resume: broken run folders, and options that differ from the saved ones
    def resume(folder: Path, *args, note=""):
        c.append(
            Case(
                "train",
                ["train", "--resume", "--out", str(folder), "--no-progress", *args],
                note=note,
                watch=[folder],
            )
        )

    resume(fx["resume_corrupt"], note="config.json not JSON, no checkpoint")
    resume(fx["resume_deep"], note=f"config.json nested {DEEP} deep, no checkpoint")
    resume(fx["resume_list"], note="config.json a list, no checkpoint")
    resume(fx["resume_foreign_ckpt"], note="gumbel config.json, a sigmoid run's last.pt")
    resume(fx["resume_garbage_ckpt"], note="last.pt not a checkpoint")
    copy = fx["resume_copy"]
    for args in (
        ["--temperature", "0.5"],
        ["--gumbel-mode", "paper"],
        ["--activation", "sigmoid"],
        ["--preset", "r50-fpn"],
        ["--data", str(fx["data_wrong_size"])],
        ["--enh"],
        ["--schedule", "2x"],
        ["--grad-every", "5"],
        ["--no-grad-log"],
        ["--score-threshold", "0.5"],
        ["--max-dets", "10"],
        ["--config", str(fx["resume_cfg"])],
        ["--lr", "0.5", "--seed", "3", "--temperature", "2"],
    ):
        resume(copy, *args, note="differs from the saved config")

    # ---- eval of a results file (RESULTS.json --gt ANN.json)
    def evf(results, *args, expect="refuse", watch=(), note=""):
        c.append(
            Case(
                "eval",
                ["eval", str(results), *args, "--no-progress"],
                expect,
                note,
                [fx["run"], *watch],
            )
        )

    evf(work / "missing.json", "--gt", gt, note="results file missing")
    evf(fx["results_text"], "--gt", gt, note="results not JSON")
    evf(fx["results_trunc"], "--gt", gt, note="results truncated")
    evf(fx["results_not_list"], "--gt", gt, note="results an object")
    evf(fx["results_str_score"], "--gt", gt, note="a score a string")
    evf(fx["results_bad_cat"], "--gt", gt, note="an unknown category")
    evf(fx["results_nan"], "--gt", gt, note="a NaN score")
    evf(fx["results_inf"], "--gt", gt, note="an inf score")
    evf(fx["results_deep"], "--gt", gt, note=f"results nested {DEEP} deep")
    evf(res, note="no --gt")
    evf(res, "--gt", str(work / "missing.json"), note="--gt missing")
    evf(res, "--gt", str(fx["empty_dir"]), note="--gt a folder")
    evf(res, "--gt", str(fx["file"]), note="--gt not JSON")
    evf(res, "--gt", str(fx["gt_deep"]), note=f"--gt nested {DEEP} deep")
    evf(res, "--gt", str(fx["data_not_lvis"] / "annotations" / "lvis_v1_train.json"))
    evf(
        res,
        *("--gt", gt, "--out", str(fx["eval_out_run"])),
        watch=[fx["eval_out_run"]],
        note="--out a run folder: its metrics.json",
    )
    evf(res, "--gt", gt, "--out", str(fx["file"]), note="--out a file")
    for args in (
        ["--score-threshold", "0.5"],
        ["--workers", "2"],
        ["--data", d],
        ["--batch-size", "2"],
        ["--iou-type", "keypoints"],
        ["--evaluator", "coco"],
        ["--max-dets", "0"],
        ["--max-dets", "-1"],
    ):
        evf(res, "--gt", gt, *args)
    # Shown as a table, not --json: APm and APl are null (undefined) on this data, not a finding.
    evf(fx["results_huge"], "--gt", gt, expect="finite", note="scores 1.7e308")
    evf(fx["results_empty"], "--gt", gt, expect="finite", note="no detection")

    # ---- table
    def tb(*args, expect="refuse", watch=(), timeout=None, note=""):
        c.append(Case("table", ["table", *args], expect, note, [fx["run"], *watch], timeout))

    tb(str(work / "missing"))
    tb(str(fx["file"]))
    tb(str(fx["empty_dir"]))
    tb(run, str(work / "missing"))
    for name in [k for k in fx if k.startswith("tbl_") and k not in TABLE_NOT_BAD]:
        tb(str(fx[name]), watch=[fx[name]], note=name)
    tb(str(fx["tbl_ap_nan"]), "--format", "csv", expect="finite", note="AP NaN")
    for links in (1, 2):
        top = fx[f"tbl_loop{links}"]
        tb(
            *(str(top), "--format", "csv"),
            expect="finite",
            watch=[top],
            timeout=60,
            note=f"{links} symlink(s) back to the top",
        )
    for args in (
        ["--format", "html"],
        ["--format", ""],
        ["--digits", "-1"],
        ["--digits", "9"],
        ["--group-by", "bogus"],
        ["--group-by", "loss", "bogus"],
        ["--group-by"],
        ["--baseline", str(work / "missing")],
        ["--baseline", str(fx["file"])],
        ["--baseline", str(fx["empty_dir"])],
        ["--baseline", str(fx["tbl_unfinished"])],
        ["--baseline", str(fx["tbl_two_configs"])],
        ["--baseline", str(fx["tbl_bad_metrics"])],
    ):
        tb(run, *args)
    tb(run, "--baseline", str(fx["tbl_other"]), expect="finite", note="baseline not among RUN")
    tb(run, str(fx["tbl_other"]), "--format", "csv", expect="finite", note="two runs")

    # ---- sweep: short runs, so that a case answered by training costs seconds
    sw_out = str(work / "sweep")
    sw = ["sweep", "--out", sw_out, "--data", d, *SHORT, *FAST]

    def sweep(*args, note="", watch=()):
        c.append(Case("sweep", [*sw, *args], note=note, watch=[fx["run"], *watch]))

    for temps in (["0"], ["-1"], ["nan"], ["inf"], ["1.0", "1.0"], ["1", "1.0", "0.8"], ["x"]):
        sweep("--temperature", *temps)
    for args in (
        ["--seeds", "0"],
        ["--seeds", "-1"],
        ["--seed", "-1"],
        ["--device", "tpu"],
        ["--loss", "sigmoid"],
        ["--loss", "softmax"],
        ["--loss", "eql", "--activation", "sigmoid"],
        ["--loss", "gumbel", "--activation", "sigmoid"],
        ["--loss", "nope"],
        ["--activation", "nope"],
        ["--plot", str(work / "fig.jpg")],
        ["--plot", str(work / "fig")],
        ["--plot", str(fx["empty_dir"])],
        ["--plot", str(work / "missing" / "fig.png")],
        ["--max-iters", "0"],
        ["--batch-size", "0"],
        ["--workers", "-1"],
        ["--data", str(work / "missing")],
        ["--data", str(fx["file"])],
        ["--data", str(fx["data_not_lvis"])],
    ):
        sweep("-t", "1.0", *args)
    if not CUDA:
        sweep("-t", "1.0", "--device", "cuda", note="no CUDA: OUT must not be made")
    for out_ in (fx["file"], Path(str(fx["file"]) + "/sub"), fx["sweep_other"]):
        args = ["sweep", "--out", str(out_), "--data", d, *SHORT, *FAST, "-t", "1.0"]
        c.append(Case("sweep", args, watch=[fx["sweep_other"]]))
    for args in LAUNCH_CASES:
        sweep("-t", "1.0", *args)

    # ---- reproduce: in a subprocess with a limit, since a case answered by training would
    # train for minutes (no --max-iters)
    rp = ["reproduce", "--out", str(work / "repro"), "--no-progress", "--quick"]

    def repro(*args, base=rp, note="", watch=()):
        c.append(Case("reproduce", [*base, *args], note=note, watch=[*watch], timeout=180))

    for args in (
        ["--only", "nope"],
        ["--only", "table3,nope"],
        ["--only", ""],
        ["--only", ","],
        ["--seeds", "0"],
        ["--seeds", "-1"],
        ["--seed", "-1"],
        ["--device", "tpu"],
        ["--workers", "-1"],
        ["--checkpoint-every", "-1"],
        *LAUNCH_CASES,
    ):
        repro(*args)
    if not CUDA:
        repro("--device", "cuda", note="no CUDA: nothing may be written")
    repro(base=["reproduce", "--out", str(fx["file"]), "--no-progress"], note="--out a file")
    repro(
        base=["reproduce", "--out", str(fx["repro_fig2"]), "--no-progress", "--only", "fig2"],
        watch=[fx["repro_fig2"]],
        note="fig2: its runs finished without grads.h5",
    )
    return c


#: --jobs, --launcher and the SLURM options, bad for sweep and reproduce alike.
LAUNCH_CASES = (
    ["--jobs", "0"],
    ["--jobs", "-2"],
    ["--jobs", "two"],
    ["--launcher", "pbs"],
    ["--no-wait"],
    ["--launcher", "slurm", "--time", "0"],
    ["--launcher", "slurm", "--gpus-per-job", "-1"],
    ["--launcher", "slurm", "--cpus-per-job", "0"],
    ["--launcher", "slurm", "--partition", ""],
)

#: Table fixtures that are not bad by themselves (used as --baseline or with a finite case).
TABLE_NOT_BAD = {"tbl_ap_nan", "tbl_unfinished", "tbl_two_configs", "tbl_other"}
TABLE_NOT_BAD |= {"tbl_loop1", "tbl_loop2"}


# ----------------------------------------------------------------------------- running


def non_finite(value, parent=None, key=None) -> str | None:
    """Where the JSON output holds NaN, inf or a null number (null is fine for ``figure`` and
    for a mean over zero images)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(key)
    if value is None and key != "figure" and not (parent and parent.get("images") == 0):
        return str(key)
    if isinstance(value, dict):
        for k, v in value.items():
            found = non_finite(v, value, k)
            if found:
                return found
    if isinstance(value, list):
        for v in value:
            found = non_finite(v, parent, key)
            if found:
                return found
    return None


def judge(case: Case, result, before, after) -> str | None:
    """None if answered as promised, else why not."""
    err = result.stderr.strip()
    if getattr(result, "hang", False):
        return f"no answer in {case.timeout:g} s (killed)"
    tb = "Traceback" in result.output or "Traceback" in err or result.exception is not None
    if isinstance(result.exception, SystemExit):
        tb = "Traceback" in result.output
    if case.expect == "finite" and result.exit_code == 0:
        if "--json" in case.args:
            try:
                where = non_finite(json.loads(result.stdout))
            except json.JSONDecodeError:
                return "exit 0 without JSON"
            if where:
                return f"exit 0 with a non-finite {where}"
        elif re.search(r"\b(nan|inf)\b", result.stdout):
            return "exit 0 showing nan/inf"
        if "Warning" in result.output:
            return "a warning"
        return None
    if result.exit_code != 2:
        return f"exit {result.exit_code}" + (" (traceback)" if tb else "")
    lines = err.splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{len(lines)} stderr lines"
    if tb:
        return "traceback"
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        return f"disk changed: {changed[0][0]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the fixtures in this folder")
    parser.add_argument("--only", help="run only this command's cases")
    parser.add_argument("--verbose", action="store_true", help="print every case's message")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bad-inputs-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    fx = fixtures(root / "fx")
    work = root / "work"
    all_cases = cases(fx, work)
    if args.only:
        all_cases = [c for c in all_cases if c.command == args.only]
    runner = CliRunner()
    tally: Counter = Counter()
    failures = []
    for case in all_cases:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        watch = [work, *case.watch]
        before = snapshot(watch)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            if case.timeout is not None:
                result = run_subprocess(case, work)
            else:
                result = runner.invoke(app, case.args)
        finally:
            os.chdir(cwd)
        after = snapshot(watch)
        why = judge(case, result, before, after)
        tally[(case.command, why is None)] += 1
        shown = " ".join(a if len(a) < 40 else "…" + a[-30:] for a in case.args)
        if why is not None:
            first = (result.stderr.strip().splitlines() or [""])[-1][:160]
            if not first and result.exception is not None:
                first = repr(result.exception)[:160]  # uncaught: the exception, not its trace
            failures.append(f"NOT OK  {shown}  [{case.note}] -> {why}: {first}")
        elif args.verbose:
            print(f"ok      {shown} -> {result.stderr.strip()[:150]}")
    for line in failures:
        print(line)
    commands = sorted({c for c, _ in tally})
    total_ok = sum(n for (_, ok), n in tally.items() if ok)
    total = sum(tally.values())
    print(f"\n{'command':12s} {'cases':>6s} {'as promised':>12s}")
    for cmd in commands:
        n = tally[(cmd, True)] + tally[(cmd, False)]
        print(f"{cmd:12s} {n:6d} {tally[(cmd, True)]:12d}")
    print(f"{'all':12s} {total:6d} {total_ok:12d}   ({time.perf_counter() - t0:.0f} s)")
    if args.keep is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    sys.exit(0 if total_ok == total else 1)


if __name__ == "__main__":
    main()

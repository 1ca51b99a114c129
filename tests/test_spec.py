"""The run spec: one declaration per loss, preset, option and run-folder file, without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gumbel_analysis.errors import InputError
from gumbel_analysis.losses import build_loss
from gumbel_analysis.losses.methods.plain import PlainBCE
from gumbel_analysis.spec import (
    FIELD_OPTIONS,
    LOSSES,
    PRESETS,
    DataStats,
    LossEntry,
    Option,
    TrainConfig,
    register_loss,
    resolve,
)
from gumbel_analysis.spec.losses import BCE_ACTIVATIONS

ROOT = Path(__file__).resolve().parents[1]


class ScaledBCE(PlainBCE):
    """A throwaway method for the test: plain BCE times a constant."""

    def __init__(self, *args, scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale

    def forward(self, logits, labels):
        return self.scale * super().forward(logits, labels)


@pytest.fixture
def throwaway_loss():
    entry = LossEntry(
        "scaled-bce",
        f"{__name__}:ScaledBCE",
        BCE_ACTIVATIONS,
        (Option("scale", "float", 2.0, "A constant factor.", low=0.0, low_open=True),),
    )
    register_loss(entry)
    yield entry
    del LOSSES[entry.name]


def test_a_loss_is_added_through_the_catalogue_alone(throwaway_loss, tmp_path):
    """One LossEntry: build_loss, the config's checks and resolution, and `gumbel train`'s
    flags, choices and refusals all follow."""
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 1])
    loss = build_loss("scaled-bce", 3, activation="gumbel", scale=3.0)
    plain = build_loss("gumbel", 3)
    assert float(loss(logits, labels)) == pytest.approx(3.0 * float(plain(logits, labels)))
    with pytest.raises(InputError, match=r"--scale must be a finite number > 0, got -1\.0"):
        TrainConfig(loss="scaled-bce", loss_options={"scale": -1.0})
    cfg = resolve(TrainConfig(loss="scaled-bce"))
    assert cfg.activation == "sigmoid" and cfg.loss_options == {"scale": 2.0}

    # `gumbel train` is built from the catalogue when its module is imported: build it anew.
    import importlib

    import typer

    from gumbel_analysis.cli import train as train_module
    from gumbel_analysis.cli.common import OneLineUsageErrors

    app = typer.Typer(cls=OneLineUsageErrors, add_completion=False)
    app.command("train")(importlib.reload(train_module).train)
    app.command("other")(lambda: None)  # two commands: `train` stays a subcommand
    runner = CliRunner()
    help_text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert "--scale" in help_text and "scaled-bce" in help_text
    result = runner.invoke(app, ["train", "--loss", "gumbel", "--scale", "2", "--out", "x"])
    assert result.exit_code == 2
    assert "--scale does not apply to --loss gumbel" in result.output
    assert not (tmp_path / "x").exists()


def test_every_catalogue_entry_names_a_class_with_its_activations():
    for entry in LOSSES.values():
        cls = entry.load_class()
        if not entry.fixed:
            assert tuple(cls.activations) == entry.activations, entry.name
        assert set(entry.activations) <= set(cls.activations), entry.name


def test_one_rule_system_names_the_flag_of_every_field():
    assert FIELD_OPTIONS["base_lr"].cli_flag == "--lr"
    assert FIELD_OPTIONS["momentum"].cli_flag == "momentum (config key)"
    with pytest.raises(InputError, match=r"^--device must be cpu, cuda, cuda:N or auto, got 'gpu"):
        TrainConfig(device="gpu")
    with pytest.raises(InputError, match=r"^--seed must be an integer >= 0 and <= 2147483647"):
        TrainConfig(seed=2**31)
    with pytest.raises(InputError, match=r"^--score-threshold must be a number in \[0, 1\)"):
        TrainConfig(score_threshold=1.0)
    with pytest.raises(InputError, match=r"^--temperature must be a number in \[0\.001, 1000\]"):
        TrainConfig(loss_options={"temperature": float("nan")})


def test_the_config_is_frozen_and_resolved_once():
    cfg = TrainConfig(preset="r50-fpn", sampler="rfs", loss="gol")
    with pytest.raises(AttributeError):
        cfg.epochs = 3  # type: ignore[misc]
    stats = DataStats([0.001, 0.002, 0.01, 0.2], ["r", "c", "c", "f"])
    out = resolve(cfg, world_size=8, device_type="cuda", data=stats)
    recipe = PRESETS["r50-fpn"].recipe
    assert (out.batch_size, out.warmup_iters, out.workers) == (
        recipe.batch_size,
        recipe.warmup_iters,
        recipe.workers,
    )
    assert out.lr == pytest.approx(recipe.base_lr * recipe.batch_size * 8 / 16)
    assert out.amp is True and out.is_resolved and not cfg.is_resolved
    # lambda and the RFS threshold: midway between the largest common and the smallest frequent
    assert out.loss_options["lambda_"] == pytest.approx((0.01 + 0.2) / 2)
    assert out.rfs_threshold == pytest.approx((0.01 + 0.2) / 2)
    assert out.loss_options["variant"] == "equation"  # gol's own default
    with pytest.raises(InputError, match="--sampler rfs: cannot derive the RFS threshold"):
        resolve(TrainConfig(sampler="rfs"), data=DataStats([0.1, 0.2], ["r", "c"]))


def test_the_spec_and_the_command_line_need_no_torch():
    code = (
        "import sys\nimport gumbel_analysis.spec\nfrom gumbel_analysis.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['train', '--help'])\nassert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['sweep', '--help'])\nassert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_folder_file_names_are_spelled_once():
    """Every module asks spec/layout.py for a run folder's files: no other source file holds
    one of their names as a string."""
    names = {"config.json", "metrics.jsonl", "last.pt", "model_final.pt", "diverged.pt"}
    names |= {"grads.h5", "results.json", "metrics.json"}
    layout = ROOT / "gumbel_analysis" / "spec" / "layout.py"
    offenders = []
    for folder in ("gumbel_analysis", "cli", "hooks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == layout:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert not offenders, offenders

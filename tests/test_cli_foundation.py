"""`gumbel init-bias` and `gumbel temperature` driven through Typer's CliRunner."""

import json
import math
import subprocess
import sys

import mpmath
import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.cli.common import expand_multi_values

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize(("num_classes", "sigma"), [(2, 1.0), (81, 1.0), (1204, 1.0), (1204, 0.8)])
def test_init_bias_json(num_classes, sigma):
    result = run(
        "init-bias",
        "--num-classes",
        str(num_classes),
        "--temperature",
        str(sigma),
        "--proposals",
        "64",
        "--features",
        "64",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bias"] == pytest.approx(-sigma * math.log(math.log(num_classes)), rel=1e-12)
    assert data["eta_at_bias"] == pytest.approx(1 / num_classes, rel=1e-12)
    assert data["num_classes"] == num_classes and data["temperature"] == sigma
    # The measured total gradient cancels to a small fraction of the gradients' magnitude.
    assert abs(data["measured"]["relative_total"]) < 0.05
    assert abs(data["closed_form"]["total"]) < 1e-9
    assert data["measured"]["positive_gradient"] == pytest.approx(
        data["closed_form"]["positive"], rel=0.05
    )
    assert data["sigmoid"]["bias"] == pytest.approx(-math.log(num_classes - 1), rel=1e-12)


def test_init_bias_table_shows_both_heads():
    result = run("init-bias", "--num-classes", "1204", "--proposals", "32", "--features", "32")
    assert result.exit_code == 0
    assert "-1.959165" in result.stdout and "-7.092574" in result.stdout
    assert "Gumbel" in result.stdout and "Sigmoid" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--num-classes", "1"], "integer >= 2"),
        (["--num-classes", "0"], "integer >= 2"),
        (["--temperature", "0"], "positive"),
        (["--temperature", "-1"], "positive"),
    ],
)
def test_init_bias_bad_input(args, fragment):
    assert_one_line_error(run("init-bias", *args), fragment)


def test_temperature_json_matches_mpmath():
    result = run("temperature", "--sigma", "0.8", "1.0", "1.2", "--clip", "-4", "10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["sigma"] for r in data["rows"]] == [0.8, 1.0, 1.2]
    for row in data["rows"]:
        s = row["sigma"]
        top = -mpmath.expm1(-mpmath.exp(-10 / s))
        bottom = mpmath.exp(-mpmath.exp(4 / s))
        assert row["top_error"] == pytest.approx(float(top), rel=1e-10)
        assert row["bottom_error"] == pytest.approx(float(bottom), rel=1e-10)


def test_temperature_default_sigmas_and_table():
    result = run("temperature")
    assert result.exit_code == 0
    for s in ("0.8", "0.9", "1.1", "1.2"):
        assert s in result.stdout
    assert "4.540e-05" in result.stdout and "1.942e-24" in result.stdout


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")]
)
def test_temperature_writes_figure_by_suffix(tmp_path, suffix, magic):
    out = tmp_path / f"fig{suffix}"
    result = run("temperature", "--sigma", "1.0", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sigma", "0"], "positive"),
        (["--sigma", "1.0", "-0.5"], "positive"),
        (["--clip", "10", "-4"], "low < high"),
        (["--clip", "3", "3"], "low < high"),
        (["--plot", "{tmp}/missing/fig.png"], "does not exist"),
        (["--out", "{tmp}/fig.jpg"], "unsupported"),  # the old spelling
    ],
)
def test_temperature_bad_input_writes_nothing(tmp_path, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_one_line_error(run("temperature", *args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_multi_value_expansion():
    assert expand_multi_values(["--sigma", "1", "2", "-3", "--out", "x"], ["--sigma"]) == [
        "--sigma",
        "1",
        "--sigma",
        "2",
        "--sigma",
        "-3",
        "--out",
        "x",
    ]
    assert expand_multi_values(["--sigma", "1", "--json"], ["--sigma"]) == [
        "--sigma",
        "1",
        "--json",
    ]


def test_every_command_has_help():
    result = run("--help")
    assert result.exit_code == 0
    commands = [c for c in ("init-bias", "temperature") if c in result.stdout]
    assert commands == ["init-bias", "temperature"]
    for command in commands:
        assert run(command, "--help").exit_code == 0


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gumbel_analysis",
            "init-bias",
            "-c",
            "10",
            "--proposals",
            "8",
            "--features",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["num_classes"] == 10


def test_figure_labels_cut_off_errors_beyond_float64():
    from gumbel_analysis.analysis.temperature import _scientific

    assert _scientific(math.log10(4.54e-5)) == "4.5e-05"
    assert _scientific(-400.3) == "5.0e-401"  # exp(-exp(...)) far below float64's range


LONG_COMMANDS = ("train", "eval", "grads", "kl-dist", "make-data", "sweep", "reproduce")


def test_every_long_command_has_the_one_progress_switch():
    """Commands with progress bars take --progress/--no-progress, meaning the same everywhere."""
    import typer

    from gumbel_analysis.cli.common import ProgressOption

    group = typer.main.get_command(app)
    ctx = group.make_context("gumbel", ["--help"], resilient_parsing=True)
    shared_help = ProgressOption.__metadata__[0].help
    for name in LONG_COMMANDS:
        command = group.get_command(ctx, name)
        switches = [p for p in command.get_params(ctx) if "--progress" in p.opts]
        assert len(switches) == 1, name
        assert switches[0].secondary_opts == ["--no-progress"], name
        assert switches[0].help == shared_help, name


def test_make_data_no_progress_prints_no_bar(tmp_path):
    result = run(
        "make-data", str(tmp_path / "d"), "--classes", "4", "--train-images", "20",
        "--val-images", "4", "--val-min-images", "1", "--size", "32", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert (tmp_path / "d" / "annotations" / "lvis_v1_train.json").is_file()

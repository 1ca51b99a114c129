"""The repository's promises: README set-up commands, CI, and no generic top-level imports."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must open with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## ")
    commands = readme_setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert "python3 -m venv .venv" in command
        assert "torch==2.14.1" in command and "torchvision==0.29.1" in command
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_setup_commands()[1] in ci.splitlines()


def test_cli_and_hooks_are_not_top_level_packages(tmp_path):
    code = (
        "import importlib.util as u;"
        "print(u.find_spec('cli') is None, u.find_spec('hooks') is None,"
        " u.find_spec('gumbel_analysis.cli') is not None,"
        " u.find_spec('gumbel_analysis.hooks') is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_pyproject_declares_ranges_not_pins():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
    assert "==" not in deps
    assert '"torch>=2.4"' in deps


def test_the_command_line_starts_without_torch(tmp_path):
    # Commands import the library when they run: --help, kl-dist and grads never load torch.
    code = "import sys, gumbel_analysis.cli.app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_train_command_offers_exactly_the_registered_losses_and_options():
    from typer.testing import CliRunner

    from gumbel_analysis.cli.app import app
    from gumbel_analysis.losses import all_options, available_losses

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    choices = re.search(r"--loss\s+<([^>]*)>", result.output).group(1)
    assert sorted(choices.split("|")) == available_losses()
    for option in all_options().values():
        assert option.cli_flag in result.output
    wrong = CliRunner().invoke(app, ["train", "--loss", "focal"])
    assert wrong.exit_code == 2


def test_every_package_folder_is_in_the_wheel():
    """An editable install finds any folder; a wheel holds only the listed packages."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folder_of = {name: folder for name, folder in setuptools["package-dir"].items()}
    listed = set(setuptools["packages"])
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in {"tests", "bench", ".venv", "build"} or rel.parts[0].startswith("."):
            continue
        for name, folder in folder_of.items():
            if rel.parts[: len(Path(folder).parts)] == Path(folder).parts:
                found.add(".".join([name, *rel.parts[len(Path(folder).parts) :]]))
                break
    assert found and found == listed

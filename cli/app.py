"""The ``gumbel`` application: wires one module per command, nothing else."""

from __future__ import annotations

import typer
from gumbel_analysis.cli import init_bias, temperature
from gumbel_analysis.cli.common import multi_value_command

app = typer.Typer(
    name="gumbel",
    help="Long-tailed instance segmentation with the Gumbel activation and GOL: losses, "
    "training and the supplementary material's analyses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

app.command("init-bias")(init_bias.init_bias)
app.command("temperature", cls=multi_value_command("--sigma", "-s"))(temperature.temperature)


def main() -> None:
    app()

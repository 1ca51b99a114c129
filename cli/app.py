"""The ``gumbel`` application: wires one module per command, nothing else."""

from __future__ import annotations

import typer

from gumbel_analysis.cli import evaluate, grads, init_bias, kl_dist, make_data, temperature, train
from gumbel_analysis.cli.common import OneLineUsageErrors, multi_value_command

app = typer.Typer(
    name="gumbel",
    help="Long-tailed instance segmentation with the Gumbel activation and GOL: losses, "
    "training and the supplementary material's analyses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    cls=OneLineUsageErrors,
)

app.command("train")(train.train)
app.command("eval")(evaluate.evaluate)
app.command("init-bias")(init_bias.init_bias)
app.command("make-data")(make_data.make_data)
app.command("temperature", cls=multi_value_command("--sigma", "-s"))(temperature.temperature)
app.command("kl-dist", cls=multi_value_command("--labels", "--images"))(kl_dist.kl_dist)
app.command("grads", cls=multi_value_command("--labels"))(grads.grads)


def main() -> None:
    app()

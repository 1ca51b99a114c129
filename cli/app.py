"""The ``gumbel`` application: wires one module per command, nothing else."""

from __future__ import annotations

import typer

from gumbel_analysis.cli import evaluate, grads, init_bias, kl_dist, make_data, temperature
from gumbel_analysis.cli import reproduce as reproduce_cli
from gumbel_analysis.cli import sweep as sweep_cli
from gumbel_analysis.cli import table as table_cli
from gumbel_analysis.cli import train as train_cli
from gumbel_analysis.cli.common import OneLineUsageErrors, multi_value_command

APP_SETTINGS = dict(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


app = typer.Typer(
    name="gumbel",
    help="Long-tailed instance segmentation with the Gumbel activation and GOL: losses, "
    "training and the supplementary material's analyses.",
    cls=OneLineUsageErrors,
    **APP_SETTINGS,
)

app.command("train")(train_cli.train)
app.command("eval", cls=multi_value_command("--iou-type"))(evaluate.evaluate)
app.command("init-bias")(init_bias.init_bias)
app.command("make-data")(make_data.make_data)
app.command("temperature", cls=multi_value_command("--sigma", "-s"))(temperature.temperature)
app.command("kl-dist", cls=multi_value_command("--labels", "--images"))(kl_dist.kl_dist)
app.command("grads", cls=multi_value_command("--labels"))(grads.grads)
app.command("table", cls=multi_value_command("--group-by"))(table_cli.table)
app.command("sweep", cls=multi_value_command("--temperature", "-t"))(sweep_cli.sweep)
app.command("reproduce")(reproduce_cli.reproduce)


def main() -> None:
    app()

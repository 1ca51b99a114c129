"""``gumbel init-bias``: the classifier's initial bias (Sec. 1.1, Eq. 1-2) and its check."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gumbel_analysis.cli.common import (
    JsonOption,
    SeedOption,
    TemperatureOption,
    console,
    print_json,
    reports_input_errors,
)


@reports_input_errors
def init_bias(
    num_classes: Annotated[
        int,
        typer.Option(
            "--num-classes", "-c", help="Classes C, background included (LVIS v1: 1203 + 1)."
        ),
    ] = 1204,
    temperature: TemperatureOption = 1.0,
    proposals: Annotated[int, typer.Option(help="Proposals in the check batch.")] = 512,
    features: Annotated[int, typer.Option(help="Input features of the checked layer.")] = 1024,
    seed: SeedOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Derive the Gumbel classifier's initial bias b = -sigma*log(log C) and check it.

    With weights 0.001 every logit starts near b, eta(b) = 1/C and the summed gradient of one
    positive and C-1 negatives (Eq. 1) is zero. The check initialises a real linear layer that
    way, runs a random batch through the loss and autograd and reports the measured gradients,
    beside the Sigmoid bias with the same prior (sigmoid(b) = 1/C).
    """
    from gumbel_analysis.analysis.init_bias import init_bias_report

    report = init_bias_report(num_classes, temperature, proposals, features, seed)
    if as_json:
        print_json(report)
        return
    g, s = report, report["sigmoid"]
    table = Table(
        title=f"Initial bias, C = {num_classes} (background included), σ = {temperature:g}",
        caption="Gradients per proposal; total = 1 positive + (C-1) negatives (Eq. 1); "
        "relative = measured total / Σ|grad|.",
    )
    table.add_column("quantity")
    table.add_column("Gumbel", justify="right")
    table.add_column("Sigmoid", justify="right")
    rows = [
        ("bias b", "-σ·log(log C)", "-log(C-1)"),
        ("value of b", f"{g['bias']:.7g}", f"{s['bias']:.7g}"),
        ("activation at b (1/C)", f"{g['eta_at_bias']:.6g}", f"{s['sigmoid_at_bias']:.6g}"),
        (
            "positive gradient",
            f"{g['closed_form']['positive']:.6g}",
            f"{s['closed_form']['positive']:.6g}",
        ),
        (
            "negative gradient",
            f"{g['closed_form']['negative']:.6g}",
            f"{s['closed_form']['negative']:.6g}",
        ),
        ("total, Eq. 1", f"{g['closed_form']['total']:.2e}", f"{s['closed_form']['total']:.2e}"),
        (
            "total, measured",
            f"{g['total_initial_gradient']:.2e}",
            f"{s['measured']['total_initial_gradient']:.2e}",
        ),
        (
            "relative, measured",
            f"{g['measured']['relative_total']:.2e}",
            f"{s['measured']['relative_total']:.2e}",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(
        f"1/C = {g['one_over_c']:.6g}. Check: {proposals} proposals, {features} features, "
        f"logits within {g['measured']['max_abs_logit_offset']:.3g} of b; measured mean positive "
        f"gradient {g['measured']['positive_gradient']:.4g} (Gumbel) vs "
        f"{s['measured']['positive_gradient']:.4g} (Sigmoid)."
    )

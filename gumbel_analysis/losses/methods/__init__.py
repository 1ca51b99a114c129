"""One file per long-tail method; importing this package registers them all (and the aliases)."""

from gumbel_analysis.losses.methods import (  # noqa: F401 - registration on import
    acsl,
    droploss,
    eql,
    eqlv2,
    federated,
    plain,
    seesaw,
    softmax,
)
from gumbel_analysis.losses.registry import register_alias

register_alias("gumbel", "bce", "gumbel", "Gumbel BCE, C + 1 outputs (Eq. 3, 4).")
register_alias("sigmoid", "bce", "sigmoid", "Sigmoid BCE, C + 1 outputs.")
register_alias(
    "gol", "droploss", "gumbel", "GOL: DropLoss with Gumbel (Eq. 4-6).", variant="equation"
)
register_alias("gol-star", "eql", "gumbel", "GOL*: EQL with Gumbel (foreground dropping only).")

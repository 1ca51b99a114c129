"""Classification losses for detectors, by name: ``build_loss("gumbel", num_classes)``.

Importing this package registers gumbel, sigmoid, softmax, gol, gol-star, droploss and eql.
"""

from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.losses.baselines import GumbelBCE, SigmoidBCE, SoftmaxCE
from gumbel_analysis.losses.gol import (
    EQL,
    GOL,
    LVIS_V1_LAMBDA,
    LVIS_V1_TRAIN_IMAGES,
    DropLoss,
    DropVariant,
    GOLStar,
    drop_weights,
    keep_probabilities,
)
from gumbel_analysis.losses.gumbel import GumbelMode, gumbel_bce
from gumbel_analysis.losses.registry import available_losses, build_loss, register_loss

__all__ = [
    "EQL",
    "GOL",
    "LVIS_V1_LAMBDA",
    "LVIS_V1_TRAIN_IMAGES",
    "ClassificationLoss",
    "DropLoss",
    "DropVariant",
    "GOLStar",
    "GumbelBCE",
    "GumbelMode",
    "SigmoidBCE",
    "SoftmaxCE",
    "available_losses",
    "build_loss",
    "drop_weights",
    "gumbel_bce",
    "keep_probabilities",
    "register_loss",
]

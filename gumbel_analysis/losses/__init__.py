"""Classification losses for detectors, by name: ``build_loss("eqlv2", C, activation="gumbel")``.

The names, activations and options of every loss (bce, eql, droploss, acsl, federated, eqlv2,
softmax, seesaw, loce, disalign and the aliases gumbel, sigmoid, gol and gol-star) are declared
in the loss catalogue, ``gumbel_analysis.spec.losses``.
"""

from gumbel_analysis.groups import lambda_from_groups
from gumbel_analysis.losses.base import ClassificationLoss
from gumbel_analysis.losses.bce import SIGMOID_PRIOR_PROB, WeightedBCE
from gumbel_analysis.losses.elementwise import EntryWeights
from gumbel_analysis.losses.gumbel import gumbel_bce
from gumbel_analysis.losses.methods.acsl import ACSL
from gumbel_analysis.losses.methods.droploss import (
    DropLoss,
    drop_weights,
    keep_probabilities,
)
from gumbel_analysis.losses.methods.eql import EQL
from gumbel_analysis.losses.methods.eqlv2 import EQLv2
from gumbel_analysis.losses.methods.federated import FederatedLoss, federated_classes
from gumbel_analysis.losses.methods.plain import PlainBCE
from gumbel_analysis.losses.methods.seesaw import SeesawLoss
from gumbel_analysis.losses.methods.softmax import SoftmaxCE
from gumbel_analysis.losses.registry import build_loss
from gumbel_analysis.paper import LVIS_V1_LAMBDA, LVIS_V1_TRAIN_IMAGES
from gumbel_analysis.spec.losses import (
    Activation,
    DropVariant,
    GumbelMode,
    LossEntry,
    all_options,
    available_losses,
    loss_entry,
    register_loss,
)

__all__ = [
    "ACSL",
    "EQL",
    "LVIS_V1_LAMBDA",
    "LVIS_V1_TRAIN_IMAGES",
    "SIGMOID_PRIOR_PROB",
    "Activation",
    "ClassificationLoss",
    "DropLoss",
    "DropVariant",
    "EQLv2",
    "EntryWeights",
    "FederatedLoss",
    "GumbelMode",
    "LossEntry",
    "PlainBCE",
    "SeesawLoss",
    "SoftmaxCE",
    "WeightedBCE",
    "all_options",
    "available_losses",
    "build_loss",
    "drop_weights",
    "federated_classes",
    "gumbel_bce",
    "keep_probabilities",
    "lambda_from_groups",
    "loss_entry",
    "register_loss",
]

"""What a run is, declared once and without torch: the loss catalogue, the presets, the files of a
run folder and the run configuration with its one resolution.

* :mod:`~gumbel_analysis.spec.options`: :class:`Option`, the one rule system of every value.
* :mod:`~gumbel_analysis.spec.losses`: :data:`LOSSES`, each loss's class, activations, options.
* :mod:`~gumbel_analysis.spec.presets`: :data:`PRESETS`, each preset's model and recipe.
* :mod:`~gumbel_analysis.spec.layout`: :class:`RunLayout`, the files of a run folder.
* :mod:`~gumbel_analysis.spec.config`: :class:`TrainConfig` and :func:`resolve`.

The command line builds its options from here; the engine, the experiments and the analyses take
a resolved :class:`TrainConfig` and never check it again.
"""

from gumbel_analysis.spec.config import (
    FIELD_OPTIONS,
    SAFE_ON_RESUME,
    DataStats,
    TrainConfig,
    load_config_file,
    merge_loss_options,
    option_name,
    resolve,
    resume_values,
)
from gumbel_analysis.spec.layout import RunLayout
from gumbel_analysis.spec.losses import (
    LOSSES,
    LossEntry,
    all_options,
    available_losses,
    loss_entry,
    register_loss,
)
from gumbel_analysis.spec.options import Option, check_options, flag_of
from gumbel_analysis.spec.presets import PRESETS, SCHEDULES, Preset, Recipe

__all__ = [
    "FIELD_OPTIONS",
    "LOSSES",
    "PRESETS",
    "SAFE_ON_RESUME",
    "SCHEDULES",
    "DataStats",
    "LossEntry",
    "Option",
    "Preset",
    "Recipe",
    "RunLayout",
    "TrainConfig",
    "all_options",
    "available_losses",
    "check_options",
    "flag_of",
    "load_config_file",
    "loss_entry",
    "merge_loss_options",
    "option_name",
    "register_loss",
    "resolve",
    "resume_values",
]

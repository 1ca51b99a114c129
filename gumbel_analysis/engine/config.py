"""Moved to :mod:`gumbel_analysis.spec.config` (temporary re-export while the move lands)."""

from gumbel_analysis.spec.config import *  # noqa: F403
from gumbel_analysis.spec.config import (  # noqa: F401
    SAFE_ON_RESUME,
    TrainConfig,
    load_config_file,
    merge_loss_options,
    option_name,
    resolve,
)

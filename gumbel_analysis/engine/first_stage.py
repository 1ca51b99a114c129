"""DisAlign's second stage starts from a finished run: ``gumbel train --loss disalign --from RUN``.

:func:`with_first_stage` records the first stage's configuration in the second's
(``first_stage``). It takes the first stage's preset, data, Enh and activation (with its Gumbel
options), so the frozen model is the one that trained. :func:`load_first_stage` then loads its
weights into the second stage's model: everything but DisAlign's new alignment.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gumbel_analysis.engine import checkpoint as ckpt
from gumbel_analysis.errors import InputError
from gumbel_analysis.model.disalign import ALIGNMENT_PARAMETERS
from gumbel_analysis.spec.config import TrainConfig
from gumbel_analysis.spec.layout import RunLayout
from gumbel_analysis.spec.losses import loss_entry

_PREDICTOR = "roi_heads.box_predictor."
_LOSS_STATE = "roi_heads.classification_loss."
#: A first stage's feature memory (LOCE's MFS) is training state of its loss too.
_MEMORY_STATE = "roi_heads.feature_memory."


def first_stage_config(from_run: str) -> TrainConfig:
    """The finished first stage's configuration; one line if it is not a finished run."""
    run = RunLayout(Path(from_run))
    if not run.root.is_dir():
        raise InputError(f"--from {from_run}: not a run folder")
    if not run.final.is_file():
        raise InputError(
            f"--from {from_run}: no {run.final.name}; the first stage must have finished"
        )
    try:
        return TrainConfig.from_dict(json.loads(run.config.read_text()), str(run.config))
    except (OSError, ValueError) as err:
        raise InputError(f"--from {from_run}: {run.config.name} unreadable ({err})") from None


def with_first_stage(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` (a second stage: ``--loss disalign``) with its first stage recorded and its
    preset, data, Enh and activation taken from it; an activation given here that differs is
    refused."""
    entry = loss_entry(cfg.loss)
    if not entry.second_stage or cfg.first_stage:
        return cfg
    first = first_stage_config(str(cfg.from_run))
    activation = first.activation or loss_entry(first.loss).default_activation
    if activation not in entry.activations:
        raise InputError(f"--from {cfg.from_run}: DisAlign cannot adjust a {activation} head")
    if cfg.activation is not None and cfg.activation != activation:
        raise InputError(
            f"--activation {cfg.activation} differs from the first stage's ({activation}, "
            f"--from {cfg.from_run}); DisAlign keeps the first stage's activation"
        )
    declared = {o.name for o in entry.options(activation)}
    options = {k: v for k, v in first.loss_options.items() if k in declared}
    options.update(cfg.loss_options)
    return cfg.replace(
        preset=first.preset,
        data=cfg.data if cfg.data is not None else first.data,
        enh=first.enh,
        activation=activation,
        loss_options=options,
        from_run=str(Path(cfg.from_run).resolve()),
        first_stage=first.to_dict(),
    )


def load_first_stage(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Load the first stage's ``model_final.pt`` into ``model`` (DisAlign's predictor keeps its
    fresh alignment); the first loss's statistics (and feature memory) are not the second's and
    stay behind."""
    path = RunLayout(Path(str(cfg.from_run))).final
    state = ckpt.load_checkpoint(path)["model"]
    state = {k: v for k, v in state.items() if not k.startswith((_LOSS_STATE, _MEMORY_STATE))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:
        raise InputError(
            f"--from {cfg.from_run}: its model does not fit DisAlign's (a classifier of C + 1 "
            "columns with a background: softmax, bce, eqlv2, acsl or loce; the same data)"
        ) from None
    fresh = {_PREDICTOR + name for name in ALIGNMENT_PARAMETERS}
    if unexpected or set(missing) - fresh:
        raise InputError(
            f"--from {cfg.from_run}: its model does not fit DisAlign's "
            f"({len(unexpected)} unexpected and {len(set(missing) - fresh)} missing weights)"
        )
